"""Classification metrics as pure functions of logits, predictions and labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["confusion_matrix", "mean_per_class_recall", "per_class_recall", "topk_correct"]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their label among the ``k`` highest logits, for each ``k`` (capped at the class count)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top == labels.view(-1, 1)  # (N, kmax)
    return {k: int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C): row = true class, column = predicted class."""
    flat = labels.long().view(-1) * num_classes + preds.long().view(-1)  # (N,)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)  # (C, C)


def per_class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class (C,); NaN for a class with no samples."""
    support = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / support  # 0/0 -> NaN


def mean_per_class_recall(confusion: torch.Tensor) -> float:
    """Mean of the per-class recalls over the classes that have samples (balanced accuracy)."""
    recall = per_class_recall(confusion)
    present = ~recall.isnan()
    return float(recall[present].mean()) if present.any() else float("nan")
