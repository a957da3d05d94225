"""Contrastive losses: pure functions of embeddings, temperature and bias; gathering is a separate wrapper."""

from cliplab.loss.chunked import chunked_clip_loss, chunked_cross_entropy
from cliplab.loss.contrastive import clip_loss
from cliplab.loss.distributed import distributed_clip_loss, gather_features
from cliplab.loss.siglip import chunked_siglip_loss, siglip_loss

__all__ = [
    "chunked_clip_loss",
    "chunked_cross_entropy",
    "chunked_siglip_loss",
    "clip_loss",
    "distributed_clip_loss",
    "gather_features",
    "siglip_loss",
]
