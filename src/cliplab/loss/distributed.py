"""Contrastive losses across processes: gather every rank's embeddings *with* their gradient.

With ``local_loss=True`` each rank scores its own rows against all gathered columns (and its own texts
against all images), labels offset by ``rank * n``. The gather's backward sums gradients back to the
owning rank and DDP averages parameter gradients, so training equals single-process training on the
concatenated batch (tested with two gloo processes).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cliplab.loss.chunked import chunked_clip_loss
from cliplab.loss.contrastive import clip_loss, siglip_loss

__all__ = ["distributed_clip_loss", "gather_features", "is_distributed"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' embeddings concatenated in rank order, differentiable: (W·n, D) each."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(image_emb)), torch.cat(all_gather(text_emb))


def _local_clip(img, txt, all_img, all_txt, scale, bias, offset):
    logits_i = scale * img @ all_txt.T  # (n, W·n)
    logits_t = scale * txt @ all_img.T  # (n, W·n)
    if bias is not None:
        logits_i, logits_t = logits_i + bias, logits_t + bias
    labels = torch.arange(img.shape[0], device=img.device) + offset
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def _local_siglip(img, all_txt, scale, bias, offset):
    logits = scale * img @ all_txt.T + bias  # (n, W·n)
    signs = -torch.ones_like(logits)
    idx = torch.arange(img.shape[0], device=img.device)
    signs[idx, idx + offset] = 1
    # SigLIP normalises by the global batch; each rank holds 1/W of the rows, DDP averages over W ranks
    return -F.logsigmoid(signs * logits).sum() / img.shape[0]


def distributed_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    *,
    local_loss: bool = True,
    chunk_size: int | None = None,
    loss: str = "clip",
) -> torch.Tensor:
    """The contrastive loss over the global batch; the single-process loss when not distributed."""
    if loss not in ("clip", "siglip"):
        raise ValueError(f"unknown loss {loss!r}")
    if loss == "siglip" and logit_bias is None:
        raise ValueError("the SigLIP loss needs a logit bias (a model built with init_logit_bias)")
    if not is_distributed():
        if loss == "siglip":
            return siglip_loss(image_emb, text_emb, logit_scale, logit_bias)
        if chunk_size:
            return chunked_clip_loss(image_emb, text_emb, logit_scale, logit_bias, chunk_size)
        return clip_loss(image_emb, text_emb, logit_scale, logit_bias)
    all_img, all_txt = gather_features(image_emb, text_emb)
    if not local_loss:
        if loss == "siglip":
            return siglip_loss(all_img, all_txt, logit_scale, logit_bias)
        if chunk_size:
            return chunked_clip_loss(all_img, all_txt, logit_scale, logit_bias, chunk_size)
        return clip_loss(all_img, all_txt, logit_scale, logit_bias)
    offset = dist.get_rank() * image_emb.shape[0]
    if loss == "siglip":
        return _local_siglip(image_emb, all_txt, logit_scale, logit_bias, offset)
    return _local_clip(image_emb, text_emb, all_img, all_txt, logit_scale, logit_bias, offset)
