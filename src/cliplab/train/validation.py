"""The validation loss a run reports every ``eval_every`` steps on ``data.val_data``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from cliplab.config import CLIPConfig
from cliplab.errors import CliplabError
from cliplab.train.config import TrainConfig, infer_format

__all__ = ["validation_hook"]

EvalHook = Callable[[torch.nn.Module, int], dict[str, Any]]


def validation_hook(cfg: TrainConfig, clip_cfg: CLIPConfig, tokenizer: Any, device: torch.device,
                     batch_size: int, max_batches: int = 20) -> EvalHook:
    """Mean contrastive loss on (up to ``max_batches`` batches of) ``data.val_data``, without augmentation.
    It runs on rank 0 alone, on batches of the global size (per-process batch × processes, so the figure
    does not depend on the number of processes), with the single-process loss (no gathering)."""
    from cliplab.data.loader import build_train_data
    from cliplab.loss.distributed import single_process_loss
    from cliplab.transforms import image_transform

    try:  # the validation set's own format, from its path (else the training data's)
        fmt = infer_format(cfg.data.val_data)
    except CliplabError:
        fmt = cfg.data.format
    val_cfg = dataclasses.replace(cfg.data, train_data=cfg.data.val_data, workers=0, format=fmt)
    preprocess = image_transform(clip_cfg.preprocess, train=False)
    build_train_data(val_cfg, preprocess, tokenizer, batch_size, seed=0,  # a bad set fails now, not mid-run
                     image_size=clip_cfg.model.vision.image_size)

    @torch.no_grad()
    def hook(model: torch.nn.Module, step: int) -> dict[str, Any]:
        data = build_train_data(val_cfg, preprocess, tokenizer, batch_size, seed=0,
                                image_size=clip_cfg.model.vision.image_size)
        n_batches = data.steps_per_epoch or max_batches
        losses, sizes = [], []
        model.eval()
        for _ in range(min(max_batches, n_batches)):
            batch = next(data.batches)
            if data.position is not None and data.position()["epoch"] > 0:
                break  # shards: one pass, not the same pairs again
            if len(batch) < 2:
                continue
            out = model(batch.images.to(device), batch.texts.to(device))
            losses.append(float(single_process_loss(out.image_embeds, out.text_embeds, out.logit_scale,
                                                    out.logit_bias, chunk_size=cfg.loss_chunk_size, loss=cfg.loss)))
            sizes.append(len(batch))
        model.train()
        if not losses:
            print(f"note: no batch of --val-data {cfg.data.val_data} had 2 usable pairs, so no validation loss "
                  f"at step {step} (bad samples in it are not listed)", flush=True)
            return {}
        return {"val_loss": sum(x * n for x, n in zip(losses, sizes, strict=True)) / sum(sizes)}  # mean over pairs

    return hook
