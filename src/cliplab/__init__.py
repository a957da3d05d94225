"""cliplab: CLIP (Contrastive Language-Image Pre-training) as a library and a command-line tool.

The public API is small and imported lazily, so ``import cliplab`` does no work::

    model, preprocess, tokenizer = cliplab.load("path/to/checkpoint")
    out = model(images, tokenizer(["a photo of a cat", "a photo of a dog"]))
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "list_models": "cliplab.api",
    "create_model": "cliplab.api",
    "load": "cliplab.api",
    "get_tokenizer": "cliplab.tokenizer",
    "load_image": "cliplab.transforms",
    "classify": "cliplab.api",
    "zero_shot_classifier": "cliplab.eval.zeroshot",
    "save_checkpoint": "cliplab.checkpoint",
    "CLIP": "cliplab.model.clip",
    "CLIPOutput": "cliplab.model.clip",
    "CLIPConfig": "cliplab.config",
    "ModelConfig": "cliplab.config",
    "CliplabError": "cliplab.errors",
    "embed_images": "cliplab.infer.embed",
    "EmbeddingStore": "cliplab.infer.store",
}

__all__ = [*sorted(_API), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cliplab' has no attribute {name!r}")
