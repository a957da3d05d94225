"""Contrastive losses across processes: gather every rank's embeddings *with* their gradient.

Gradient bookkeeping (W ranks, n pairs each, global batch N = W·n, global loss L):

* ``local_loss=False``: every rank computes the same L on the gathered batch. The gather's backward sums the
  W identical contributions, so a rank's embeddings get W·∂L/∂x; DDP divides parameter gradients by W.
* ``local_loss=True``: rank r computes L_r, the mean over its own n rows (images against all texts, and its
  texts against all images, labels offset by r·n), so L = (1/W) Σ_r L_r. The gather's backward sums
  ∂L_r'/∂x_r over r', and DDP's division by W turns that into ∂L/∂x_r. The temperature (a replicated
  parameter) gets ∂L_r/∂s on rank r, averaged by DDP to ∂L/∂s.

Either way the DDP-averaged gradient equals the single-process gradient on the concatenated batch (tested with
two gloo processes). Every rank must hold the same n.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cliplab.loss.chunked import chunked_clip_loss, chunked_cross_entropy
from cliplab.loss.contrastive import clip_loss
from cliplab.loss.siglip import chunked_siglip_loss, siglip_loss

__all__ = ["distributed_clip_loss", "gather_features", "is_distributed", "single_process_loss"]

LOSSES = ("clip", "siglip")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(image_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' embeddings in rank order, differentiable: (W·n, D) each; the inputs when not distributed.

    Both the local and the global loss need every rank's images and texts (a rank's texts are scored against
    all images), so the two gather the same.
    """
    if not is_distributed():
        return image_emb, text_emb
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # recent torch marks it deprecated in favour of a private module; a user
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional", FutureWarning)  # cannot act on it
        return torch.cat(all_gather(image_emb)), torch.cat(all_gather(text_emb))  # (W·n, D) each


def single_process_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                        chunk_size: int | None = None, loss: str = "clip") -> torch.Tensor:
    """The loss over this process's batch alone, even under torch.distributed (e.g. rank 0's validation)."""
    if loss == "siglip" and bias is None:
        raise ValueError("the SigLIP loss needs a logit bias (build the model with init_logit_bias)")
    return _single(img, txt, scale, bias, chunk_size, loss)


def _single(img, txt, scale, bias, chunk_size, loss):
    if loss == "siglip":
        return chunked_siglip_loss(img, txt, scale, bias, chunk_size=chunk_size) if chunk_size \
            else siglip_loss(img, txt, scale, bias)
    if chunk_size:
        return chunked_clip_loss(img, txt, scale, bias, chunk_size)
    return clip_loss(img, txt, scale, bias)


def _local_clip(img, txt, all_img, all_txt, scale, bias, offset, chunk_size):
    if chunk_size:
        loss = (chunked_cross_entropy(img, all_txt, scale, offset, chunk_size)
                + chunked_cross_entropy(txt, all_img, scale, offset, chunk_size)) / 2
        return loss if bias is None else loss + 0.0 * bias  # CE ignores a constant shift: zero gradient
    logits_i = scale * img @ all_txt.T  # (n, W·n)
    logits_t = scale * txt @ all_img.T  # (n, W·n)
    if bias is not None:
        logits_i, logits_t = logits_i + bias, logits_t + bias
    labels = torch.arange(img.shape[0], device=img.device) + offset
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


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
    """The contrastive loss (``"clip"`` or ``"siglip"``) over the global batch.

    Falls back to the single-process loss when torch.distributed is not initialised. ``chunk_size`` selects the
    tiled O(N)-memory variant.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (expected one of {LOSSES})")
    if loss == "siglip" and logit_bias is None:
        raise ValueError("the SigLIP loss needs a logit bias (build the model with init_logit_bias)")
    if not is_distributed():
        return _single(image_emb, text_emb, logit_scale, logit_bias, chunk_size, loss)
    all_img, all_txt = gather_features(image_emb, text_emb)
    if not local_loss:
        return _single(all_img, all_txt, logit_scale, logit_bias, chunk_size, loss)
    offset = dist.get_rank() * image_emb.shape[0]
    if loss == "siglip":  # own images against every text; normalised by the local n (see module docstring)
        if chunk_size:
            return chunked_siglip_loss(image_emb, all_txt, logit_scale, logit_bias, offset, chunk_size)
        return siglip_loss(image_emb, all_txt, logit_scale, logit_bias, offset)
    return _local_clip(image_emb, text_emb, all_img, all_txt, logit_scale, logit_bias, offset, chunk_size)
