"""Config → module. Tower types register here, so a new tower plugs in without touching anything else."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cliplab.config import ModelConfig
from cliplab.model.clip import CLIP
from cliplab.model.modified_resnet import ModifiedResNet
from cliplab.model.text_transformer import CBOWText, TextTransformer
from cliplab.model.vision_transformer import VisionTransformer

__all__ = ["TEXT_TOWERS", "VISION_TOWERS", "count_parameters", "create_model"]

# tower type (the "type" key of an architecture file) -> constructor(tower_config, embed_dim)
VISION_TOWERS: dict[str, Callable[..., nn.Module]] = {"vit": VisionTransformer, "resnet": ModifiedResNet}
TEXT_TOWERS: dict[str, Callable[..., nn.Module]] = {"transformer": TextTransformer, "cbow": CBOWText}


def create_model(cfg: ModelConfig) -> CLIP:
    """A freshly initialised CLIP model for an architecture (fp32, CPU)."""
    visual = VISION_TOWERS[cfg.vision.type](cfg.vision, cfg.embed_dim)
    text = TEXT_TOWERS[cfg.text.type](cfg.text, cfg.embed_dim)
    return CLIP(cfg, visual, text)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
