"""The training curves a run draws at its end (``curves.png``)."""

from __future__ import annotations

import os
from typing import Any

from cliplab.plotting import new_figure, save_figure

__all__ = ["plot_curves"]


def plot_curves(history: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Loss (and validation loss), temperature, and zero-shot accuracy where logged (else the learning rate)
    against the step."""
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "zeroshot_top1" in h]
    val = [h for h in history if "val_loss" in h]
    fig, axes = new_figure((13, 3.6), 1, 3)
    dots = "o" if len(train) < 2 else None  # a single logged step is a dot, not an invisible line
    axes[0].plot([h["step"] for h in train], [h["loss"] for h in train], lw=1, marker=dots, label="training")
    if val:
        axes[0].plot([h["step"] for h in val], [h["val_loss"] for h in val], marker="o", color="C3",
                     label="validation")
        axes[0].legend()
    axes[0].set(title="contrastive loss", xlabel="step", yscale="log")
    axes[1].plot([h["step"] for h in train], [h.get("scale", float("nan")) for h in train], lw=1, color="C1",
                 marker=dots)
    axes[1].set(title="logit scale (1 / temperature)", xlabel="step")
    if evals:
        axes[2].plot([h["step"] for h in evals], [100 * h["zeroshot_top1"] for h in evals], marker="o", color="C2")
        axes[2].set(title="zero-shot top-1, held-out (%)", xlabel="step", ylim=(0, 100))
    else:
        axes[2].plot([h["step"] for h in train], [h.get("lr", float("nan")) for h in train], lw=1, color="C2",
                     marker=dots)
        axes[2].set(title="learning rate", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
