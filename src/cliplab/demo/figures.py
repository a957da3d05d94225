"""The demo's pictures: the N×N similarity matrix (the paper's figure 1) and predictions (the training curves
are :func:`cliplab.train.curves.plot_curves`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from cliplab.demo.measure import model_device
from cliplab.plotting import new_figure, save_figure

__all__ = ["plot_predictions", "plot_similarity"]


@torch.no_grad()
def plot_similarity(model: Any, preprocess: Any, tokenizer: Any, scenes: list, path: str | os.PathLike[str]) -> None:
    """Cosine similarity of N images (rows) and their N captions (columns); the diagonal matches."""
    n = len(scenes)
    dev = model_device(model)
    img = model.encode_image(torch.stack([preprocess(im) for im, _ in scenes]).to(dev), normalize=True)
    txt = model.encode_text(tokenizer([c for _, c in scenes], truncate=True).to(dev), normalize=True)
    sim = (img @ txt.T).float().cpu().numpy()  # (N, N)
    fig, ax = new_figure((1.1 * n + 3, 1.0 * n + 1.5), 1, 1)
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
    save_figure(fig, path, dpi=110, bbox_inches="tight")


@torch.no_grad()
def plot_predictions(model: Any, preprocess: Any, classifier: torch.Tensor, classnames: list[str],
                     items: list, path: str | os.PathLike[str], cols: int = 6) -> None:
    """A grid of images with their top-3 zero-shot labels and probabilities (true label in the title)."""
    dev = model_device(model)
    feats = model.encode_image(torch.stack([preprocess(im) for im, _ in items]).to(dev), normalize=True)
    probs = (model.scale() * feats.float() @ classifier.to(dev).float()).softmax(dim=-1).cpu()  # (N, C)
    rows = (len(items) + cols - 1) // cols
    fig, axes = new_figure((2.6 * cols, 3.1 * rows), rows, cols)
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
    save_figure(fig, path, dpi=110, bbox_inches="tight")
