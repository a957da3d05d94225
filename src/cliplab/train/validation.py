"""The validation loss a run reports every ``eval_every`` steps on ``data.val_data``."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from cliplab.config import CLIPConfig
from cliplab.errors import CliplabError, CliplabWarning
from cliplab.train.config import TrainConfig, infer_format

__all__ = ["validation_hook"]

EvalHook = Callable[[torch.nn.Module, int], dict[str, Any]]


def validation_hook(cfg: TrainConfig, clip_cfg: CLIPConfig, tokenizer: Any, device: torch.device,
                    rank: int = 0, world_size: int = 1, max_batches: int = 20) -> EvalHook:
    """Mean contrastive loss on (up to ``max_batches`` batches of) ``data.val_data``, without augmentation, in
    the run's precision. Every process calls it at the same steps: each embeds its share of a batch (the
    per-process batch size), the shares are gathered, and the loss is taken over the whole global batch, so
    the figure does not depend on the number of processes and no process holds more than its own share."""
    from cliplab.data.loader import build_train_data
    from cliplab.loss.distributed import single_process_loss
    from cliplab.precision import autocast
    from cliplab.transforms import image_transform

    try:  # the validation set's own format, from its path (else the training data's)
        fmt = infer_format(cfg.data.val_data)
    except CliplabError:
        fmt = cfg.data.format
    val_cfg = dataclasses.replace(cfg.data, train_data=cfg.data.val_data, workers=0, format=fmt)
    preprocess = image_transform(clip_cfg.preprocess, train=False)

    # shards: every process reads the global batches (as one process would) and embeds its slice of each; split
    # by shard, the batches would depend on the number of processes and the pass end with the first to finish
    whole = fmt == "wds"

    def data() -> Any:
        with warnings.catch_warnings():  # shards that split unevenly: validation stops with the first to finish
            warnings.simplefilter("ignore", CliplabWarning)
            if whole:
                return build_train_data(val_cfg, preprocess, tokenizer, cfg.batch_size * world_size, seed=0,
                                        image_size=clip_cfg.model.vision.image_size)
            return build_train_data(val_cfg, preprocess, tokenizer, cfg.batch_size, rank=rank,
                                    world_size=world_size, seed=0, image_size=clip_cfg.model.vision.image_size)

    data()  # a bad set fails now, not mid-run

    @torch.no_grad()
    def hook(model: torch.nn.Module, step: int) -> dict[str, Any]:
        val = data()
        n_batches = min(max_batches, val.steps_per_epoch or max_batches)
        losses, sizes = [], []
        if world_size > 1:  # BatchNorm statistics: rank 0's, which its checkpoints hold (DDP broadcasts them
            for buffer in model.buffers():  # before every training step anyway)
                dist.broadcast(buffer, 0)
        model.eval()
        for _ in range(n_batches):
            batch = next(val.batches)
            done = val.position is not None and val.position()["epoch"] > 0  # shards: one pass, not the same again
            if _any_rank(done, world_size, device):
                break
            images, texts = batch.images, batch.texts
            if whole:
                images, texts = images[rank::world_size], texts[rank::world_size]
            img = txt = torch.zeros(0, clip_cfg.model.embed_dim, device=device)  # a batch of bad samples only
            if len(images):
                with autocast(device, cfg.precision):
                    out = model(images.to(device), texts.to(device))
                img, txt = out.image_embeds, out.text_embeds
            img = _gather_rows(img.float(), world_size)  # (pairs of every process, D)
            txt = _gather_rows(txt.float(), world_size)
            if img.shape[0] < 2:
                continue
            bias = None if model.logit_bias is None else model.logit_bias.float()
            losses.append(float(single_process_loss(img, txt, model.scale().float(), bias,
                                                    chunk_size=cfg.loss_chunk_size, loss=cfg.loss)))
            sizes.append(img.shape[0])
        model.train()
        if not losses:
            if rank == 0:
                print(f"note: no batch of --val-data {cfg.data.val_data} had 2 usable pairs, so no validation loss "
                      f"at step {step} (bad samples in it are not listed)", flush=True)
            return {}
        mean = sum(x * n for x, n in zip(losses, sizes, strict=True)) / sum(sizes)  # over pairs
        return {"val_loss": mean if math.isfinite(mean) else None}  # strict JSON has no NaN

    return hook


def _any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    if world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gather_rows(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every process's rows in rank order, without gradient; the processes' row counts may differ (bad
    samples are left out of a batch)."""
    if world_size == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(counts, n)
    rows = max(int(c) for c in counts)
    padded = torch.zeros(rows, *x.shape[1:], dtype=x.dtype, device=x.device)  # (max rows, D)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(c)] for part, c in zip(parts, counts, strict=True)])  # (sum of rows, D)
