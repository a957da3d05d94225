"""CLIP's symmetric contrastive loss and SigLIP's pairwise sigmoid loss, as pure functions.

Inputs are L2-normalised embeddings (N, D) and the logit *multiplier* (``exp`` of the learned log-scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss", "siglip_loss"]


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of the image→text and text→image cross-entropies over the N×N logits; pair i matches i."""
    logits = logit_scale * image_emb @ text_emb.T  # (N, N)
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP: ``-Σ log σ(z_ij (s x_i·y_j + b)) / N`` with z = +1 on the diagonal and −1 elsewhere."""
    logits = logit_scale * image_emb @ text_emb.T + logit_bias  # (N, N)
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1  # (N, N)
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]
