"""OpenAI's (and open_clip's) CLIP state-dict names ↔ cliplab's, and the architecture read off tensor shapes."""

from __future__ import annotations

import re
from typing import Any

import torch

from cliplab.checkpoint import CheckpointError
from cliplab.config import ModelConfig, ResNetConfig, TextTransformerConfig, ViTConfig
from cliplab.errors import CliplabError

__all__ = ["from_openai", "infer_config", "strip_wrappers", "to_openai"]

# (OpenAI pattern, cliplab replacement), applied in order to every key
_RULES = [
    (r"^visual\.transformer\.resblocks\.", "visual.transformer.blocks."),
    (r"^transformer\.resblocks\.", "text.transformer.blocks."),
    (r"\.attn\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.attn\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.attn\.out_proj\.", ".attn.out."),
    (r"\.mlp\.c_fc\.", ".mlp.fc."),
    (r"\.mlp\.c_proj\.", ".mlp.proj."),
    (r"^token_embedding\.", "text.token_embedding."),
    (r"^positional_embedding$", "text.positional_embedding"),
    (r"^ln_final\.", "text.ln_final."),
    (r"^visual\.layer([1-4])\.", lambda m: f"visual.stages.{int(m.group(1)) - 1}."),
    (r"\.downsample\.1\.", ".downsample.2."),  # OpenAI: [-1] avg-pool, [0] conv, [1] bn; cliplab: [0] pool, [1], [2]
    (r"\.downsample\.0\.", ".downsample.1."),
]
_EXTRA = {"input_resolution", "context_length", "vocab_size"}  # ints stored in OpenAI's archives
OPENAI_VOCAB = 49408  # OpenAI's BPE: 256 bytes, 256 word-final bytes, 48,894 merges, start, end


def strip_wrappers(key: str) -> str:
    """A key without the prefixes training wrappers add, in any order: DDP's ``module.`` and
    ``torch.compile``'s ``_orig_mod.`` (open_clip checkpoints carry either or both)."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.removeprefix("module.").removeprefix("_orig_mod.")
    return key


def _rename(key: str, vit: bool) -> str:
    if vit and key == "visual.conv1.weight":
        return "visual.patch_embed.weight"
    for pattern, repl in _RULES:
        key = re.sub(pattern, repl, key)
    return key


def from_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI / open_clip names → cliplab names (projections transposed into Linear weights)."""
    sd = {strip_wrappers(k): v for k, v in sd.items() if strip_wrappers(k) not in _EXTRA}
    vit = "visual.proj" in sd
    out = {}
    for key, value in sd.items():
        if key == "visual.proj":
            out["visual.proj.weight"] = value.T.contiguous()
        elif key == "text_projection":
            out["text.proj.weight"] = value.T.contiguous()
        else:
            out[_rename(key, vit)] = value
    return out


_REVERSE = [
    (r"^visual\.patch_embed\.weight$", "visual.conv1.weight"),
    (r"^visual\.transformer\.blocks\.", "visual.transformer.resblocks."),
    (r"^text\.transformer\.blocks\.", "transformer.resblocks."),
    (r"\.attn\.qkv\.weight$", ".attn.in_proj_weight"),
    (r"\.attn\.qkv\.bias$", ".attn.in_proj_bias"),
    (r"\.attn\.out\.", ".attn.out_proj."),
    (r"\.mlp\.fc\.", ".mlp.c_fc."),
    (r"\.mlp\.proj\.", ".mlp.c_proj."),
    (r"^text\.(token_embedding|positional_embedding|ln_final)", r"\1"),
    (r"^visual\.stages\.(\d)\.", lambda m: f"visual.layer{int(m.group(1)) + 1}."),
    (r"\.downsample\.1\.", ".downsample.0."),
    (r"\.downsample\.2\.", ".downsample.1."),
]
_PROJECTIONS = {"visual.proj.weight": "visual.proj", "text.proj.weight": "text_projection"}


def to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cliplab names → OpenAI names (the inverse of :func:`from_openai`)."""
    out = {}
    for key, value in sd.items():
        if key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = value.T.contiguous()
            continue
        for pattern, repl in _REVERSE:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _count(sd: dict[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


# open_clip's large vision towers whose heads are not 64 channels wide (its ViT-H, ViT-g and ViT-bigG
# configs: head widths 80, 88 and 104), keyed by (width, layers); facts from open_clip's model configs.
_OPEN_CLIP_VISION_HEADS = {(1280, 32): 16, (1408, 40): 16, (1664, 48): 16}


def _heads(width: int, tower: str, layers: int = 0) -> int:
    """OpenAI's rule, one head per 64 channels, except open_clip's large vision towers; narrower towers need
    their architecture given."""
    if tower == "vision tower" and (width, layers) in _OPEN_CLIP_VISION_HEADS:
        return _OPEN_CLIP_VISION_HEADS[width, layers]
    if width < 64:
        raise CliplabError(f"cannot infer the attention heads of a {tower} of width {width} from tensor shapes "
                           "(OpenAI's rule is width / 64); give the architecture (--arch)")
    return width // 64


def _shape(sd: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Size:
    """The shape of ``sd[key]``, which must have ``ndim`` dimensions."""
    shape = sd[key].shape
    if len(shape) != ndim:
        raise CheckpointError(f"tensor {key} has shape {list(shape)}; an OpenAI/open_clip CLIP has {ndim} "
                              f"dimension{'s' * (ndim != 1)} there")
    return shape


def infer_config(sd: dict[str, torch.Tensor], activation: str = "quick_gelu") -> ModelConfig:
    """The architecture of an OpenAI-named state dict, from tensor shapes alone (as OpenAI's build_model)."""
    sd = {strip_wrappers(k): v for k, v in sd.items()}
    try:
        embed_dim = _shape(sd, "text_projection", 2)[1]
        tw = _shape(sd, "ln_final.weight", 1)[0]
        text = TextTransformerConfig(
            context_length=_shape(sd, "positional_embedding", 2)[0], width=tw, heads=_heads(tw, "text tower"),
            layers=_count(sd, r"^transformer\.resblocks\.(\d+)\."),
            mlp_ratio=_shape(sd, "transformer.resblocks.0.mlp.c_fc.weight", 2)[0] / tw, activation=activation,
            **_vocabulary(_shape(sd, "token_embedding.weight", 2)[0]))
        if "visual.proj" in sd:
            width, _, _, patch = _shape(sd, "visual.conv1.weight", 4)
            grid = round((_shape(sd, "visual.positional_embedding", 2)[0] - 1) ** 0.5)
            layers = _count(sd, r"^visual\.transformer\.resblocks\.(\d+)\.")
            vision = ViTConfig(image_size=patch * grid, patch_size=patch, width=width,
                               heads=_heads(width, "vision tower", layers), layers=layers,
                               mlp_ratio=_shape(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2)[0] / width,
                               activation=activation)
        else:
            layers = tuple(_count(sd, rf"^visual\.layer{b}\.(\d+)\.") for b in (1, 2, 3, 4))
            width = _shape(sd, "visual.layer1.0.conv1.weight", 4)[0]
            out = round((_shape(sd, "visual.attnpool.positional_embedding", 2)[0] - 1) ** 0.5)
            vision = ResNetConfig(image_size=out * 32, layers=layers, width=width,
                                  heads=_heads(width * 32, "ResNet attention pool"))
    except KeyError as err:
        raise CliplabError(f"not an OpenAI/open_clip CLIP state dict (no tensor {err.args[0]!r})") from None
    return ModelConfig(embed_dim=embed_dim, vision=vision, text=text)


def _vocabulary(size: int) -> dict[str, Any]:
    """The text config's vocabulary and pooling. OpenAI's and open_clip's code pools at the highest id of a
    text; with OpenAI's BPE that is its end-of-text token (49407, the last id), where cliplab's default pools.
    Another vocabulary keeps their rule (its end-of-text id is unknown)."""
    if size == OPENAI_VOCAB:
        return {"vocab_size": size}
    return {"vocab_size": size, "eot_token_id": size - 1, "pool": "argmax"}
