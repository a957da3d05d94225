"""The demo's pictures: training curves, the N×N similarity matrix (the paper's figure 1), predictions."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from cliplab.fileio import atomic_path

__all__ = ["plot_curves", "plot_predictions", "plot_similarity"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _figure().close(fig)


def plot_curves(history: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Loss, temperature and (where logged) zero-shot accuracy against the step."""
    plt = _figure()
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "zeroshot_top1" in h]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    dots = "o" if len(train) < 2 else None  # a single logged step is a dot, not an invisible line
    axes[0].plot([h["step"] for h in train], [h["loss"] for h in train], lw=1, marker=dots)
    axes[0].set(title="contrastive loss", xlabel="step", yscale="log")
    axes[1].plot([h["step"] for h in train], [h.get("scale", float("nan")) for h in train], lw=1, color="C1",
                 marker=dots)
    axes[1].set(title="logit scale (1 / temperature)", xlabel="step")
    if evals:
        axes[2].plot([h["step"] for h in evals], [100 * h["zeroshot_top1"] for h in evals], marker="o", color="C2")
    axes[2].set(title="zero-shot top-1, held-out (%)", xlabel="step", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, path)


@torch.no_grad()
def plot_similarity(model: Any, preprocess: Any, tokenizer: Any, scenes: list, path: str | os.PathLike[str]) -> None:
    """Cosine similarity of N images (rows) and their N captions (columns); the diagonal matches."""
    plt = _figure()
    n = len(scenes)
    img = model.encode_image(torch.stack([preprocess(im) for im, _ in scenes]), normalize=True)
    txt = model.encode_text(tokenizer([c for _, c in scenes], truncate=True), normalize=True)
    sim = (img @ txt.T).float().numpy()  # (N, N)
    fig, ax = plt.subplots(figsize=(1.1 * n + 3, 1.0 * n + 1.5))
    ax.imshow(sim, cmap="viridis", vmin=sim.min(), vmax=sim.max(), extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if i == j else "white")
        ax.imshow(np.asarray(scenes[i][0]), extent=(-1.45, -0.55, i + 0.45, i - 0.45))
    ax.set_xlim(-1.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xticks(range(n))
    ax.set_xticklabels([c for _, c in scenes], rotation=40, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title("image–text cosine similarity (matching pairs on the diagonal)")
    _save(fig, path)


@torch.no_grad()
def plot_predictions(model: Any, preprocess: Any, classifier: torch.Tensor, classnames: list[str],
                     items: list, path: str | os.PathLike[str], cols: int = 6) -> None:
    """A grid of images with their top-3 zero-shot labels and probabilities (true label in the title)."""
    plt = _figure()
    feats = model.encode_image(torch.stack([preprocess(im) for im, _ in items]), normalize=True)
    probs = (model.scale() * feats @ classifier).softmax(dim=-1)  # (N, C)
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.1 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (image, label), p in zip(np.atleast_1d(axes).ravel(), items, probs, strict=False):
        top = p.topk(3)
        ax.imshow(np.asarray(image))
        ok = int(top.indices[0]) == label
        ax.set_title(f"true: {classnames[label]}", fontsize=8, color="green" if ok else "red")
        lines = [f"{classnames[int(i)]}: {100 * float(v):.0f}%" for v, i in zip(top.values, top.indices, strict=True)]
        ax.text(0.5, -0.05, "\n".join(lines), transform=ax.transAxes, ha="center", va="top", fontsize=7)
    fig.suptitle("zero-shot predictions on held-out colour×shape combinations (never seen in training)")
    _save(fig, path)
