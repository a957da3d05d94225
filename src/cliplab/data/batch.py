"""The contract between datasets and the trainer.

Every dataset yields either a pair ``(image, tokens)`` — a float tensor (3, S, S) and a long tensor (L,) —
or a :class:`BadSample` naming what could not be read and why. :func:`collate` drops the bad ones into
``Batch.bad`` so the loop can count, log and (with ``on_bad_sample="error"``) stop on them, and a run
never dies mid-epoch because of one file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["BadSample", "Batch", "collate"]


@dataclass(frozen=True)
class BadSample:
    source: str  # file, "file:row" or "shard.tar/key"
    reason: str


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S)
    texts: torch.Tensor  # (B, L)
    bad: list[BadSample] = field(default_factory=list)
    worker: int = 0  # the DataLoader worker that made it: a stream's position is counted per worker

    def __len__(self) -> int:
        return self.images.shape[0]

    def pin_memory(self) -> Batch:
        """Page-locked copies, so the copy to a CUDA device overlaps compute (DataLoader ``pin_memory=True``)."""
        return Batch(self.images.pin_memory(), self.texts.pin_memory(), self.bad, self.worker)


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor] | BadSample]) -> Batch:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    worker = info.id if info is not None else 0
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [it for it in items if isinstance(it, BadSample)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad, worker)
    images = torch.stack([img for img, _ in good])  # (B, 3, S, S)
    texts = torch.stack([tok for _, tok in good])  # (B, L)
    return Batch(images, texts, bad, worker)
