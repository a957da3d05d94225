"""Shared set-up for the integration tests."""

import dataclasses
from pathlib import Path

from cliplab.checkpoint import save_checkpoint
from cliplab.config import CLIPConfig, load_arch
from cliplab.model.build import create_model


def tiny_checkpoint(path: Path, arch: str = "ViT-Tiny-32px", embed_dim: int | None = None) -> Path:
    """A randomly initialised native checkpoint of a small architecture, saved at ``path``."""
    model_cfg = load_arch(arch)
    if embed_dim is not None:
        model_cfg = dataclasses.replace(model_cfg, embed_dim=embed_dim)
    cfg = CLIPConfig.for_model(model_cfg)
    save_checkpoint(create_model(cfg.model), cfg, path)
    return path
