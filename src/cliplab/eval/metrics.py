"""Classification metrics as pure functions of logits, predictions and labels.

Ties are **pessimistic**, as in :mod:`cliplab.eval.retrieval`: the rank of the true class is the number of
classes whose logit is at least the true class's (``>=``, itself included), so a collapsed classifier whose
logits are all equal gets rank C, never 1. :func:`predictions` follows the same rule, so that top-1 accuracy
always equals the confusion matrix's trace over the number of samples. A NaN logit counts as -inf.

One exception, given ``groups`` (C,): classes of one group are namesakes (ImageNet lists "missile" and
"sunglasses" twice), whose zero-shot columns are identical, so their logits always tie. Between namesakes the
first one wins the tie, as ``argmax`` picks it in OpenAI's evaluation: counted pessimistically both would
always be wrong. Groups come from the names, not from equal columns, so a collapsed text tower (every column
equal) still finds no class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "confusion_matrix",
    "mean_per_class_recall",
    "namesakes",
    "per_class_recall",
    "predictions",
    "topk_correct",
    "true_class_rank",
]


def _finite_order(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` as float with NaN replaced by -inf, so that a NaN never wins a comparison."""
    return logits.float().nan_to_num(nan=float("-inf"))


def namesakes(classnames: Sequence[str]) -> torch.Tensor:
    """Groups (C,): equal ids for classes of the same name."""
    first: dict[str, int] = {}
    return torch.tensor([first.setdefault(name, i) for i, name in enumerate(classnames)], dtype=torch.long)


def _later_namesakes(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """(N, C): classes that share the label's group and come after it (they lose a tie with it); all False
    without groups."""
    if groups is None:
        return torch.zeros_like(scores, dtype=torch.bool)
    groups = groups.to(scores.device)
    after = torch.arange(scores.shape[1], device=scores.device)[None, :] > labels  # (N, C)
    return (groups[None, :] == groups[labels]) & after  # (N, C)


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank (N,) of each row's label among its logits (N, C): classes scoring ``>=`` it, itself included
    (a later namesake's tie aside)."""
    scores = _finite_order(logits)
    labels = labels.long().view(-1, 1).to(scores.device)  # (N, 1)
    own = scores.gather(1, labels)  # (N, 1)
    ahead = (scores > own) | ((scores == own) & ~_later_namesakes(scores, labels, groups))  # (N, C)
    return ahead.sum(dim=1)  # (N,)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5),
                 groups: torch.Tensor | None = None) -> dict[int, int]:
    """How many rows rank their label within the top ``k`` (pessimistic ties), for each ``k``."""
    rank = true_class_rank(logits, labels, groups)  # (N,)
    return {k: int((rank <= k).sum()) for k in ks}


def predictions(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted class (N,) under the pessimistic tie rule: the label when it alone has the highest logit,
    otherwise the first other class with the highest logit. ``pred == label`` exactly when the rank is 1."""
    scores = _finite_order(logits)
    labels = labels.long().view(-1).to(scores.device)  # (N,)
    at_max = scores >= scores.max(dim=1, keepdim=True).values  # (N, C)
    rows = torch.arange(scores.shape[0], device=scores.device)
    at_max[rows, labels] = False  # (N, C): other classes sharing the maximum
    at_max &= ~_later_namesakes(scores, labels[:, None], groups)  # a later namesake loses the tie
    rival = at_max.any(dim=1)  # (N,)
    return torch.where(rival, at_max.long().argmax(dim=1), labels)  # argmax of bools: the first True


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
