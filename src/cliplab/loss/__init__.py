"""Contrastive losses: pure functions of embeddings, temperature and bias."""

from cliplab.loss.chunked import chunked_clip_loss
from cliplab.loss.contrastive import clip_loss, siglip_loss
from cliplab.loss.distributed import distributed_clip_loss, gather_features

__all__ = ["chunked_clip_loss", "clip_loss", "distributed_clip_loss", "gather_features", "siglip_loss"]
