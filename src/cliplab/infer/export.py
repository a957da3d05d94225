"""Export the two encoders to ONNX (dynamic batch and text length) with the preprocessing and tokenizer config
beside them.

The folder it writes is everything a non-Python service needs: ``image_encoder.onnx`` maps
``pixel_values`` (N, 3, S, S) to ``image_embeds`` (N, D); ``text_encoder.onnx`` maps ``input_ids``
(N, L) int64, any L up to the context length (padding after the last end-of-text token can be left out, as
``encode_text`` allows), to ``text_embeds`` (N, D) (unnormalised, like ``encode_image``/``encode_text``);
``config.json`` holds the resolved cliplab config plus the logit scale.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from cliplab.config import CLIPConfig, to_dict
from cliplab.errors import CliplabError
from cliplab.fileio import atomic_dir, atomic_path, write_json
from cliplab.model.clip import CLIP

__all__ = ["export_onnx"]

OPSET = 17


class _ImageEncoder(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class _TextEncoder(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids)


def _export(module: nn.Module, example: torch.Tensor, path: Path, inp: str, out: str,
            axes: dict[int, str]) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns about its own deprecation
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=[inp],
            output_names=[out],
            dynamic_axes={inp: axes, out: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


@torch.no_grad()
def export_onnx(model: CLIP, cfg: CLIPConfig, out_dir: str | os.PathLike[str], root: Path | None = None) -> Path:
    """Write ``image_encoder.onnx``, ``text_encoder.onnx`` and ``config.json`` into ``out_dir``, which must not
    be a training run's folder nor hold a model (its config.json would be replaced)."""
    from cliplab.checkpoint import WEIGHTS, check_model_output

    out = Path(out_dir)
    check_model_output(out)
    if (out / WEIGHTS).exists() or (out / "pytorch_model.bin").exists():
        raise CliplabError(f"{out}: holds a model, whose config.json the export would replace; export to another "
                           "folder")
    with atomic_dir(out) as work:  # replaced whole: never one model's image encoder beside another's text
        _write(model, cfg, work, root)
    return out


def _write(model: CLIP, cfg: CLIPConfig, out: Path, root: Path | None) -> None:
    caller, was_training = model, model.training
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the caller's model keeps its dtype and device
    model.eval()  # inference: dropout off, and the logit scale as stored (its training-time cap off)
    s = cfg.model.vision.image_size
    pixels = torch.randn(2, 3, s, s)  # (N, 3, S, S)
    ids = torch.zeros(2, cfg.model.text.context_length, dtype=torch.long)  # (N, L)
    ids[:, 0], ids[:, 3] = 1, cfg.model.text.eot_token_id
    try:  # the wrappers are in eval mode too: the exporter restores their mode, and so the model's, after
        _export(_ImageEncoder(model).eval(), pixels, out / "image_encoder.onnx", "pixel_values", "image_embeds",
                {0: "batch"})
        _export(_TextEncoder(model).eval(), ids, out / "text_encoder.onnx", "input_ids", "text_embeds",
                {0: "batch", 1: "sequence"})  # ids may stop after the batch's last end-of-text token
    except Exception as err:  # the exporter's own errors are long; keep the user's line short
        raise CliplabError(f"ONNX export failed: {str(err).splitlines()[0]}") from err
    finally:
        caller.train(was_training)
    meta = to_dict(cfg)
    meta["logit_scale"] = float(model.logit_scale.exp())  # uncapped, as the model computes at inference
    meta["logit_bias"] = None if model.logit_bias is None else float(model.logit_bias)
    if cfg.tokenizer.vocab and root is not None:
        with atomic_path(out / cfg.tokenizer.vocab) as tmp:
            shutil.copyfile(root / cfg.tokenizer.vocab, tmp)
    write_json(out / "config.json", meta)
