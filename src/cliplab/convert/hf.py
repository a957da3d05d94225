"""Hugging Face ``CLIPModel`` folders ↔ cliplab: config, key names, fused attention projections."""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from cliplab.config import (
    OPENAI_MEAN,
    OPENAI_STD,
    CLIPConfig,
    ModelConfig,
    PreprocessConfig,
    TextTransformerConfig,
    TokenizerConfig,
    ViTConfig,
)
from cliplab.convert.openai import OPENAI_VOCAB
from cliplab.errors import CliplabError, CliplabWarning
from cliplab.fileio import atomic_path, write_json

__all__ = ["export_hf", "from_hf", "hf_config_to_cliplab", "is_hf_dir", "read_hf_dir", "to_hf"]

_TOWER = {"vision_model": "visual", "text_model": "text"}
_RULES = [
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.patch_embed."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^visual_projection\.", "visual.proj."),
    (r"^text_model\.embeddings\.token_embedding\.", "text.token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "text.positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "text.ln_final."),
    (r"^text_projection\.", "text.proj."),
    (r"^(vision_model|text_model)\.encoder\.layers\.", lambda m: f"{_TOWER[m.group(1)]}.transformer.blocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.fc."),
    (r"\.mlp\.fc2\.", ".mlp.proj."),
]
_QKV = re.compile(r"^(.*)\.self_attn\.(q|k|v)_proj\.(weight|bias)$")


_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # interpolation -> PIL's code, as HF stores it

def _act(value: str, where: str) -> str:
    if value not in ("quick_gelu", "gelu"):
        raise CliplabError(f"{where}: activation {value!r} is not supported (quick_gelu or gelu)")
    return value


def hf_config_to_cliplab(cfg: dict[str, Any], preprocessor: dict[str, Any] | None = None) -> CLIPConfig:
    """A ``transformers.CLIPConfig`` JSON (and its preprocessor config) → a resolved cliplab config."""
    try:
        v, t = _tower_config(cfg, "vision"), _tower_config(cfg, "text")
        vision = ViTConfig(
            image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32), width=v.get("hidden_size", 768),
            layers=v.get("num_hidden_layers", 12), heads=v.get("num_attention_heads", 12),
            mlp_ratio=v.get("intermediate_size", 3072) / v.get("hidden_size", 768),
            activation=_act(v.get("hidden_act", "quick_gelu"), "vision_config.hidden_act"),
            ln_eps=v.get("layer_norm_eps", 1e-5))
        vocab = t.get("vocab_size", 49408)
        eos = t.get("eos_token_id", 49407)
        text = TextTransformerConfig(
            context_length=t.get("max_position_embeddings", 77), vocab_size=vocab,
            width=t.get("hidden_size", 512), layers=t.get("num_hidden_layers", 12),
            heads=t.get("num_attention_heads", 8),
            mlp_ratio=t.get("intermediate_size", 2048) / t.get("hidden_size", 512),
            activation=_act(t.get("hidden_act", "quick_gelu"), "text_config.hidden_act"),
            ln_eps=t.get("layer_norm_eps", 1e-5), **_pooling(eos, vocab))
    except (KeyError, TypeError, AttributeError, ZeroDivisionError) as err:
        raise CliplabError(f"config.json is not a CLIPModel config ({type(err).__name__}: {err})") from None
    model = ModelConfig(embed_dim=cfg.get("projection_dim", 512), vision=vision, text=text,
                        init_logit_scale=cfg.get("logit_scale_init_value", 2.6592))
    if preprocessor is not None and not isinstance(preprocessor, dict):
        raise CliplabError(f"preprocessor_config.json: expected a JSON object, got {type(preprocessor).__name__}")
    pre = _preprocess_from_hf(preprocessor, vision.image_size) if preprocessor else PreprocessConfig(vision.image_size)
    if text.vocab_size != OPENAI_VOCAB:
        warnings.warn(f"the text tower has a vocabulary of {text.vocab_size} tokens, not the {OPENAI_VOCAB} of "
                      "OpenAI's BPE, which cliplab tokenizes with: give encode_text the ids of this model's own "
                      "tokenizer (image embeddings are unaffected)", CliplabWarning, stacklevel=3)
    return CLIPConfig(model, pre, TokenizerConfig(context_length=text.context_length), name=cfg.get("_name_or_path"))


def _tower_config(cfg: dict[str, Any], tower: str) -> dict[str, Any]:
    """``text_config`` / ``vision_config``, or the legacy ``text_config_dict`` / ``vision_config_dict`` where one
    is given: transformers then builds the tower from it alone (its defaults for what it leaves out)."""
    legacy = cfg.get(f"{tower}_config_dict")
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise TypeError(f"{tower}_config_dict is not an object")
        return legacy
    return cfg[f"{tower}_config"]


def _pooling(eos: int, vocab: int) -> dict[str, Any]:
    """The text config's pooling for HF's ``eos_token_id``. Id 2 is HF's legacy config: it pools at the
    largest id in the text. With CLIP's BPE that is the end of text, the vocabulary's last id, where cliplab's
    own architectures pool (the same on every text its tokenizer makes); another vocabulary keeps HF's rule."""
    if eos == 2:
        return {"eot_token_id": vocab - 1} if vocab == OPENAI_VOCAB else {"pool": "argmax", "eot_token_id": vocab - 1}
    if not 0 <= eos < vocab:
        warnings.warn(f"text_config.eos_token_id {eos} is outside the vocabulary of {vocab} tokens: HF pools such "
                      "a model at each text's first position, cliplab at its highest id", CliplabWarning,
                      stacklevel=4)
        return {"pool": "argmax", "eot_token_id": vocab - 1}
    return {"eot_token_id": eos}


def _side(value: Any, where: str) -> tuple[str, int, int]:
    """A HF ``size`` / ``crop_size``: ``("shortest", n, n)`` or ``("exact", height, width)``. Older files
    (``CLIPFeatureExtractor``) give a bare number: the shortest side for ``size``, a square for crops."""
    try:
        if isinstance(value, int | float):
            return ("shortest" if where == "size" else "exact", int(value), int(value))
        if isinstance(value, dict) and "shortest_edge" in value:
            return "shortest", int(value["shortest_edge"]), int(value["shortest_edge"])
        if isinstance(value, dict) and "height" in value and "width" in value:
            return "exact", int(value["height"]), int(value["width"])
    except (TypeError, ValueError):
        pass
    raise CliplabError(f"preprocessor_config.json: {where} {value!r} is neither a number, shortest_edge nor "
                       "height/width")


def _number(value: Any, where: str, nonzero: bool = True) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or (nonzero and value == 0)):
        raise CliplabError(f"preprocessor_config.json: {where} {value!r} is not a {'non-zero ' * nonzero}number")
    return float(value)


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    """A per-channel value: three numbers, or one for all channels (as ``CLIPImageProcessor`` accepts)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * 3
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise CliplabError(f"preprocessor_config.json: {where} {value!r} is neither one number nor three")
    return tuple(_number(v, where, nonzero=where == "image_std") for v in value)


def _preprocess_from_hf(pre: dict[str, Any], image_size: int) -> PreprocessConfig:
    """``CLIPImageProcessor`` settings as cliplab's preprocessing. Rescaling and normalisation flags fold into
    mean/std; a resize/crop pair cliplab cannot do (resize to one size, crop to another) is approximated by
    resizing to the model's input, with a warning."""
    import warnings

    from cliplab.errors import CliplabWarning

    resample = pre.get("resample", 3)
    if resample not in _RESAMPLE.values():
        raise CliplabError(f"preprocessor_config.json: resample {resample!r} is not one cliplab implements "
                           f"({', '.join(f'{v} = {k}' for k, v in _RESAMPLE.items())})")
    mode, h, w = _side(pre.get("size", image_size), "size")
    crop = pre.get("do_center_crop", True)
    _, ch, cw = _side(pre.get("crop_size", pre.get("size", image_size)), "crop_size")
    squash = mode == "exact" and h == w == image_size and (not crop or ch == cw == image_size)
    exact = squash or (mode == "shortest" and h == image_size and crop and ch == cw == image_size)
    if not exact or not pre.get("do_resize", True):
        warnings.warn(f"preprocessor_config.json: resizes to {pre.get('size')} and crops to "
                      f"{pre.get('crop_size') if crop else 'nothing'}; cliplab resizes the shortest side to the "
                      f"model's {image_size} and centre-crops it", CliplabWarning, stacklevel=3)
    # HF normalises x * rescale_factor (x in 0..255); cliplab x / 255: the same with mean and std over 255 * factor
    factor = _number(pre.get("rescale_factor", 1 / 255), "rescale_factor") if pre.get("do_rescale", True) else 1.0
    scale = 1.0 if math.isclose(255 * factor, 1.0, rel_tol=1e-9) else 255 * factor
    if pre.get("do_normalize", True):
        mean = tuple(m / scale for m in _triple(pre.get("image_mean", OPENAI_MEAN), "image_mean"))
        std = tuple(s / scale for s in _triple(pre.get("image_std", OPENAI_STD), "image_std"))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0 / scale,) * 3
    return PreprocessConfig(image_size=image_size, mean=mean, std=std,
                            interpolation=next(k for k, v in _RESAMPLE.items() if v == resample),
                            resize_mode="squash" if squash else "shortest")


def from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF key names → cliplab (q, k, v projections fused into one qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        m = _QKV.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CliplabError(f"{prefix}: incomplete attention projections {sorted(parts)}")
        for pattern, repl in _RULES:
            prefix = re.sub(pattern, repl, prefix)
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cliplab key names → HF (qkv split back into q, k, v)."""
    reverse = [
        (r"^visual\.patch_embed\.", "vision_model.embeddings.patch_embedding."),
        (r"^visual\.class_embedding$", "vision_model.embeddings.class_embedding"),
        (r"^visual\.positional_embedding$", "vision_model.embeddings.position_embedding.weight"),
        (r"^visual\.ln_pre\.", "vision_model.pre_layrnorm."),
        (r"^visual\.ln_post\.", "vision_model.post_layernorm."),
        (r"^visual\.proj\.", "visual_projection."),
        (r"^text\.token_embedding\.", "text_model.embeddings.token_embedding."),
        (r"^text\.positional_embedding$", "text_model.embeddings.position_embedding.weight"),
        (r"^text\.ln_final\.", "text_model.final_layer_norm."),
        (r"^text\.proj\.", "text_projection."),
        (r"^visual\.transformer\.blocks\.", "vision_model.encoder.layers."),
        (r"^text\.transformer\.blocks\.", "text_model.encoder.layers."),
        (r"\.attn\.out\.", ".self_attn.out_proj."),
        (r"\.ln_1\.", ".layer_norm1."),
        (r"\.ln_2\.", ".layer_norm2."),
        (r"\.mlp\.fc\.", ".mlp.fc1."),
        (r"\.mlp\.proj\.", ".mlp.fc2."),
    ]
    out = {}
    for key, value in sd.items():
        m = re.match(r"^(.*)\.attn\.qkv\.(weight|bias)$", key)
        base = m.group(1) if m else key
        for pattern, repl in reverse:
            base = re.sub(pattern, repl, base)
        if m:
            for name, part in zip("qkv", value.chunk(3), strict=True):
                out[f"{base}.self_attn.{name}_proj.{m.group(2)}"] = part.contiguous()
        else:
            out[base] = value
    return out


def _hf_config(cfg: CLIPConfig) -> dict[str, Any]:
    m = cfg.model
    v, t = m.vision, m.text
    if not isinstance(v, ViTConfig) or not isinstance(t, TextTransformerConfig):
        raise CliplabError(f"a {v.type} image tower with a {t.type} text tower has no Hugging Face CLIPModel "
                           "equivalent (only ViT + Transformer); keep the native format or export to ONNX")
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": m.embed_dim,
        "logit_scale_init_value": m.init_logit_scale,
        "vision_config": {"model_type": "clip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
                          "hidden_size": v.width, "num_hidden_layers": v.layers, "num_attention_heads": v.heads,
                          "intermediate_size": round(v.width * v.mlp_ratio), "hidden_act": v.activation,
                          "layer_norm_eps": v.ln_eps, "projection_dim": m.embed_dim, "num_channels": 3},
        "text_config": {"model_type": "clip_text_model", "max_position_embeddings": t.context_length,
                        "vocab_size": t.vocab_size, "hidden_size": t.width, "num_hidden_layers": t.layers,
                        "num_attention_heads": t.heads, "intermediate_size": round(t.width * t.mlp_ratio),
                        "hidden_act": t.activation, "layer_norm_eps": t.ln_eps, "projection_dim": m.embed_dim,
                        # eos id 2: HF's legacy config, which pools at the highest id
                        "eos_token_id": 2 if t.pool == "argmax" else t.eot_token_id,
                        "bos_token_id": t.eot_token_id - 1,
                        "pad_token_id": 1},
    }


def export_hf(model: torch.nn.Module, cfg: CLIPConfig, out_dir: str | os.PathLike[str]) -> Path:
    """Write a folder ``transformers.CLIPModel.from_pretrained`` loads with no missing or unexpected keys,
    and ``CLIPImageProcessor.from_pretrained`` with the weights' own preprocessing."""
    from safetensors.torch import save_file

    from cliplab.checkpoint import check_model_output

    if getattr(model, "logit_bias", None) is not None:
        raise CliplabError("a model with a logit bias (SigLIP-trained) has no HF CLIPModel equivalent: CLIPModel "
                           "would drop the bias; keep the native format or export to ONNX")
    if cfg.tokenizer.kind != "openai":
        raise CliplabError("a model with a learned tokenizer has no HF CLIPTokenizer equivalent (HF's cleans text "
                           "its own way); keep the native format or export to ONNX")
    out = Path(out_dir)
    if out.suffix == ".safetensors":
        raise CliplabError(f"{out}: a HF CLIPModel is a folder (config.json, model.safetensors, tokenizer "
                           "files); give a folder name")
    check_model_output(out)
    hf_cfg = _hf_config(cfg)  # refuses what HF cannot hold before anything is written
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in to_hf(model.state_dict()).items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    p = cfg.preprocess
    s, squash = p.image_size, p.resize_mode == "squash"
    write_json(out / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True,
        "size": {"height": s, "width": s} if squash else {"shortest_edge": s}, "resample": _RESAMPLE[p.interpolation],
        "do_center_crop": not squash, "crop_size": {"height": s, "width": s}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(p.mean), "image_std": list(p.std),
        "do_convert_rgb": True})
    _write_hf_tokenizer(out, cfg.tokenizer.context_length)
    write_json(out / "config.json", hf_cfg)
    return out


def _write_hf_tokenizer(out: Path, context_length: int) -> None:
    """OpenAI's BPE as ``CLIPTokenizer`` files (vocab.json, merges.txt and their settings), so that
    ``CLIPProcessor.from_pretrained`` on the folder loads; it gives cliplab's ids for plain text, but HF cleans
    text its own way (no ftfy fix or HTML unescaping), so ids differ on HTML entities and ligatures."""
    from cliplab.fileio import write_text
    from cliplab.tokenizer import EOT, SOT, openai_vocab

    vocab, merges = openai_vocab()
    write_json(out / "vocab.json", vocab, indent=None)
    write_text(out / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = {"bos_token": SOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {"tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
                                               "do_lower_case": True, "errors": "replace", **specials})


def is_hf_dir(path: Path) -> bool:
    if not (path.is_dir() and (path / "config.json").exists()):
        return False
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return False
    return isinstance(data, dict) and ("vision_config" in data or "vision_config_dict" in data)


def _hf_weights(path: Path, allow_unsafe: bool) -> dict[str, torch.Tensor]:
    """The state dict of a HF folder: one safetensors or PyTorch file, or the shards an index names."""
    from cliplab.convert.foreign import read_pickle, read_safetensors

    for name, read in (("model.safetensors", read_safetensors), ("pytorch_model.bin", None)):
        reader = read or (lambda p: read_pickle(p, allow_unsafe))
        if (path / name).exists():
            return reader(path / name)
        index = path / f"{name}.index.json"
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise CliplabError(f"{index}: unreadable shard index ({type(err).__name__}: {err})") from None
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (path / shard).exists():
                    raise CliplabError(f"{index}: names the shard {shard}, which is missing")
                sd.update(reader(path / shard))
            return sd
    raise CliplabError(f"{path}: no model.safetensors or pytorch_model.bin (nor a sharded index of either)")


def read_hf_dir(path: Path, allow_unsafe: bool = False) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    pre = path / "preprocessor_config.json"
    try:
        cfg_json = json.loads((path / "config.json").read_text())
        pre_json = json.loads(pre.read_text()) if pre.exists() else None
    except (OSError, ValueError) as err:
        raise CliplabError(f"{path}: unreadable config.json or preprocessor_config.json ({err})") from None
    try:
        clip_cfg = hf_config_to_cliplab(cfg_json, pre_json)
    except CliplabError as err:
        raise CliplabError(f"{path}: {err}") from None
    return clip_cfg, from_hf(_hf_weights(path, allow_unsafe))
