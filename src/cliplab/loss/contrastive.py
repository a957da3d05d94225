"""CLIP's symmetric contrastive loss as a pure function.

Inputs are L2-normalised embeddings (N, D) and the logit *multiplier* (``exp`` of the learned log-scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss"]


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the image→text and text→image cross-entropies over the N×N logits; pair i matches i."""
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"expected two (N, D) embeddings of one shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    logits = logit_scale * image_emb @ text_emb.T  # (N, N)
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
