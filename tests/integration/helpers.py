"""Shared set-up for the integration tests."""

from pathlib import Path

from cliplab.checkpoint import save_checkpoint
from cliplab.config import CLIPConfig, load_arch
from cliplab.model.build import create_model


def tiny_checkpoint(path: Path, arch: str = "ViT-Tiny-32px") -> Path:
    """A randomly initialised native checkpoint of a small architecture, saved at ``path``."""
    cfg = CLIPConfig.for_model(load_arch(arch))
    save_checkpoint(create_model(cfg.model), cfg, path)
    return path
