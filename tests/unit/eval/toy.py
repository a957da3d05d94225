"""Toy encoders and tokenizers with known embeddings, shared by the eval tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class TableTokenizer:
    """Each known string becomes one token id: its position in ``vocab``."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.index = {text: i for i, text in enumerate(vocab)}
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        return torch.tensor([[self.index[t]] for t in texts], dtype=torch.long)  # (N, 1)


class ToyEncoder(nn.Module):
    """Text embedding = a row of ``text_table`` chosen by the single token; image embedding = the first D
    values of the image (or, with ``pool=True``, the mean of each channel)."""

    def __init__(self, text_table: torch.Tensor, pool: bool = False) -> None:
        super().__init__()
        self.text_table = nn.Parameter(text_table.float(), requires_grad=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.pool = pool
        self.text_batches: list[int] = []

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        self.text_batches.append(len(tokens))
        emb = self.text_table[tokens[:, 0]]  # (N, D)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        d = self.text_table.shape[1]
        emb = images.mean(dim=(2, 3)) if self.pool else images.flatten(1)[:, :d]  # (B, D)
        return nn.functional.normalize(emb, dim=-1) if normalize else emb


def images_from_features(feats: torch.Tensor, size: int = 4) -> torch.Tensor:
    """Images (B, 3, size, size) whose first D values are ``feats`` (B, D), the rest zero."""
    b, d = feats.shape
    flat = torch.zeros(b, 3 * size * size)
    flat[:, :d] = feats
    return flat.view(b, 3, size, size)  # (B, 3, S, S)
