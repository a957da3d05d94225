"""Matplotlib figures without pyplot: no global backend or figure registry is touched; writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cliplab.fileio import atomic_path

__all__ = ["new_figure", "save_figure"]


def new_figure(figsize: tuple[float, float], rows: int | None = None, cols: int | None = None,
               **kwargs: Any) -> tuple[Any, Any]:
    """``(figure, axes)`` on its own Agg canvas; ``axes`` as ``Figure.subplots`` gives them (None without
    ``rows``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig, (fig.subplots(rows, cols) if rows else None)


def save_figure(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Write ``fig`` atomically in the format the suffix names (PNG without one)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)
