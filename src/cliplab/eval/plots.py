"""Figures for evaluation reports (matplotlib's Agg canvas, no pyplot state; atomic writes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cliplab.plotting import new_figure, save_figure

__all__ = ["plot_confusion"]

MAX_TICK_LABELS = 40  # above this many classes the axes are left unlabelled


def plot_confusion(result: Any, classnames: Sequence[str] | None, path: str | os.PathLike[str]) -> None:
    """Row-normalised confusion matrix (each row = one true class, sums to 1) of a ``ZeroShotResult``."""
    confusion = result.confusion.double()  # (C, C)
    rows = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)  # (C, C)
    n = rows.shape[0]
    side = min(4 + 0.25 * n, 20) if n <= MAX_TICK_LABELS else 10
    fig, ax = new_figure((side + 1.5, side), 1, 1, dpi=100)
    image = ax.imshow(rows.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= MAX_TICK_LABELS:
        names = list(classnames) if classnames is not None else [str(i) for i in range(n)]
        ax.set_xticks(range(n), names, rotation=90, fontsize=8, parse_math=False)  # a "$" is just a "$"
        ax.set_yticks(range(n), names, fontsize=8, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"top-1 {100 * result.top1:.1f} %, mean per-class recall {100 * result.mean_per_class_recall:.1f} %")
    fig.tight_layout()
    save_figure(fig, path)
