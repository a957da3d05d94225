"""Typed, frozen configuration for models, preprocessing and tokenizers.

Architectures are data: ``archs/<name>.json`` holds ``{"embed_dim", "vision", "text"}`` and each tower
section carries a ``type`` that selects its config class and module (see ``model/build.py``). Unknown
keys are an error, so a typo in a JSON file never silently falls back to a default.

A *resolved* config (:class:`CLIPConfig`) is what a checkpoint stores: the architecture plus the
preprocessing and tokenizer that belong to its weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from cliplab.errors import CliplabError

__all__ = [
    "ACTIVATIONS",
    "CBOWTextConfig",
    "CLIPConfig",
    "ConfigError",
    "ModelConfig",
    "PreprocessConfig",
    "ResNetConfig",
    "TextTransformerConfig",
    "TokenizerConfig",
    "ViTConfig",
    "arch_names",
    "from_dict",
    "load_arch",
    "to_dict",
]

ACTIVATIONS = ("gelu", "quick_gelu")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(CliplabError, ValueError):
    """A configuration file or dictionary is malformed; the message names the field."""


_SIGNED = {"init_logit_scale", "init_logit_bias", "mean"}  # numbers that may be zero or negative
_NON_NEGATIVE = {"eot_token_id"}


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) if integer else math.isfinite(value)


def _check_fields(cfg: Any, where: str) -> None:
    """Every field holds a value of its annotated type (numbers positive unless listed above), so a bad
    value in a JSON file is a one-line error naming it, not a crash deep inside model construction."""
    for f in fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        if kind.endswith(" | None"):
            if value is None:
                continue
            kind = kind.removesuffix(" | None")
        if kind == "str":
            ok, numbers = isinstance(value, str), []
        elif kind in ("int", "float"):
            ok, numbers = _is_number(value, kind == "int"), [value]
        elif kind.startswith("tuple["):
            integer = kind.startswith("tuple[int")
            ok = isinstance(value, tuple) and all(_is_number(v, integer) for v in value)
            numbers = list(value) if ok else []
        else:
            continue  # a nested config, checked by its own class
        if not ok:
            raise ConfigError(f"{where}.{f.name}: expected {kind}, got {value!r}")
        if f.name not in _SIGNED and any(v < 0 or (v == 0 and f.name not in _NON_NEGATIVE) for v in numbers):
            raise ConfigError(f"{where}.{f.name}: must be positive, got {value!r}")


def _check_activation(value: str, where: str) -> None:
    if value not in ACTIVATIONS:
        raise ConfigError(f"{where}.activation: unknown activation {value!r} (expected one of {ACTIVATIONS})")


@dataclass(frozen=True)
class ViTConfig:
    """Vision Transformer tower (OpenAI layout: class token, ln_pre, pre-LN blocks, ln_post, projection)."""

    type: ClassVar[str] = "vit"
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_fields(self, "vision")
        _check_activation(self.activation, "vision")
        if self.image_size % self.patch_size:
            raise ConfigError(f"vision: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ConfigError(f"vision: width {self.width} is not divisible by heads {self.heads}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ResNetConfig:
    """OpenAI's ModifiedResNet: 3-conv stem, anti-aliased bottlenecks, attention pooling."""

    type: ClassVar[str] = "resnet"
    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    heads: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        _check_fields(self, "vision")
        if len(self.layers) != 4:
            raise ConfigError(f"vision.layers: a ResNet needs 4 stage depths, got {list(self.layers)}")
        if self.image_size % 32:
            raise ConfigError(f"vision: image_size {self.image_size} is not a multiple of 32")
        if (self.width * 32) % self.heads:
            raise ConfigError(f"vision: the attention pool's width {self.width * 32} (width × 32) is not divisible "
                              f"by heads {self.heads}")


TEXT_POOLS = ("eot", "argmax")


@dataclass(frozen=True)
class TextTransformerConfig:
    """Causal text Transformer pooled at the end-of-text token. ``pool``: ``"eot"``, at the first
    ``eot_token_id`` of a text (its last position if it has none); ``"argmax"``, at the highest id of a text
    (its first occurrence), as OpenAI's and open_clip's code and Hugging Face's legacy configs (eos id 2) do.
    The two agree whenever a text holds its end-of-text token and that is the vocabulary's last id."""

    type: ClassVar[str] = "transformer"
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    ln_eps: float = 1e-5
    eot_token_id: int = 49407
    pool: str = "eot"

    def __post_init__(self) -> None:
        _check_fields(self, "text")
        _check_activation(self.activation, "text")
        if self.width % self.heads:
            raise ConfigError(f"text: width {self.width} is not divisible by heads {self.heads}")
        _check_eot(self)
        if self.pool not in TEXT_POOLS:
            raise ConfigError(f"text.pool: unknown value {self.pool!r} (expected one of {TEXT_POOLS})")


@dataclass(frozen=True)
class CBOWTextConfig:
    """Continuous bag of words: mean of token embeddings (padding excluded), then a projection."""

    type: ClassVar[str] = "cbow"
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    eot_token_id: int = 49407

    def __post_init__(self) -> None:
        _check_fields(self, "text")
        _check_eot(self)


def _check_eot(cfg: TextTransformerConfig | CBOWTextConfig) -> None:
    if cfg.eot_token_id >= cfg.vocab_size:
        raise ConfigError(f"text.eot_token_id {cfg.eot_token_id} is outside the vocabulary of {cfg.vocab_size} "
                          "tokens (set eot_token_id to the tokenizer's end-of-text id)")


VISION_CONFIGS: dict[str, type] = {"vit": ViTConfig, "resnet": ResNetConfig}
TEXT_CONFIGS: dict[str, type] = {"transformer": TextTransformerConfig, "cbow": CBOWTextConfig}
VisionConfig = ViTConfig | ResNetConfig
TextConfig = TextTransformerConfig | CBOWTextConfig


@dataclass(frozen=True)
class ModelConfig:
    """One architecture: a joint embedding size and two towers."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextTransformerConfig)
    init_logit_scale: float = 2.6592600369644043  # ln(1 / 0.07)
    max_logit_scale: float = 100.0
    init_logit_bias: float | None = None  # set (e.g. -10) for SigLIP models

    def __post_init__(self) -> None:
        _check_fields(self, "model")


@dataclass(frozen=True)
class PreprocessConfig:
    """Image preprocessing that belongs to a set of weights."""

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # resize the shorter side, then centre-crop

    def __post_init__(self) -> None:
        for key in ("mean", "std"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        _check_fields(self, "preprocess")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("preprocess: mean and std need 3 values each")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ConfigError(f"preprocess.interpolation: unknown value {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ConfigError(f"preprocess.resize_mode: unknown value {self.resize_mode!r}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer a model expects. ``kind="openai"`` is the shipped OpenAI BPE; ``kind="bpe"`` a
    vocabulary learned with ``cliplab tokenizer train``, stored beside the checkpoint as JSON
    (``vocab`` holds the file name, relative to the checkpoint)."""

    kind: str = "openai"
    context_length: int = 77
    vocab: str | None = None

    def __post_init__(self) -> None:
        _check_fields(self, "tokenizer")
        if self.kind not in ("openai", "bpe"):
            raise ConfigError(f"tokenizer.kind: unknown value {self.kind!r} (expected 'openai' or 'bpe')")


@dataclass(frozen=True)
class CLIPConfig:
    """Everything needed to rebuild a model and feed it: architecture + preprocessing + tokenizer."""

    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    name: str | None = None

    @classmethod
    def for_model(cls, model: ModelConfig, name: str | None = None) -> CLIPConfig:
        """Default preprocessing (OpenAI statistics) and tokenizer for an architecture."""
        return cls(
            model=model,
            preprocess=PreprocessConfig(image_size=model.vision.image_size),
            tokenizer=TokenizerConfig(context_length=model.text.context_length),
            name=name,
        )


# --------------------------------------------------------------------------- dict <-> dataclass


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - {"type"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (known: {sorted(known)})")
    kwargs = {k: v for k, v in data.items() if k != "type"}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def _tower(data: Any, registry: dict[str, type], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in registry:
        raise ConfigError(f"{where}.type: unknown tower type {kind!r} (known: {sorted(registry)})")
    return _build(registry[kind], data, where)


def model_from_dict(data: dict[str, Any], where: str = "model") -> ModelConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object")
    rest = {k: v for k, v in data.items() if k not in ("vision", "text")}
    for key in ("vision", "text"):
        if key not in data:
            raise ConfigError(f"{where}: missing key {key!r}")
    base = _build(ModelConfig, rest, where)
    return dataclasses.replace(
        base,
        vision=_tower(data["vision"], VISION_CONFIGS, f"{where}.vision"),
        text=_tower(_older_text(data["text"], f"{where}.text"), TEXT_CONFIGS, f"{where}.text"),
    )


def _older_text(data: Any, where: str) -> Any:
    """A text tower written before ``pool`` existed, whose end-of-text id lies outside its vocabulary (a
    foreign vocabulary converted with OpenAI's id, or an architecture file that leaves the id to a learned
    tokenizer): its end-of-text token is taken to be the vocabulary's last id and, for a Transformer, texts
    are pooled at their highest id, as OpenAI's code does. Refused when ``pool`` is given."""
    if not isinstance(data, dict) or "pool" in data or not isinstance(data.get("vocab_size"), int):
        return data
    vocab, eot = data["vocab_size"], data.get("eot_token_id", TextTransformerConfig.eot_token_id)
    if not isinstance(eot, int) or eot < vocab or vocab < 1:
        return data
    import warnings

    from cliplab.errors import CliplabWarning

    if "eot_token_id" in data:  # a file's own id, not the default an architecture file leaves to a tokenizer
        warnings.warn(f"{where}.eot_token_id {eot} is outside the vocabulary of {vocab} tokens: taking "
                      f"{vocab - 1} and pooling each text at its highest id, as OpenAI's code does", CliplabWarning,
                      stacklevel=3)
    return {**data, "eot_token_id": vocab - 1, **({"pool": "argmax"} if data.get("type") == "transformer" else {})}


def from_dict(data: dict[str, Any]) -> CLIPConfig:
    """Build a :class:`CLIPConfig` from its JSON form, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected an object")
    unknown = sorted(set(data) - {"model", "preprocess", "tokenizer", "name", "cliplab_version"})
    if unknown:
        raise ConfigError(f"config: unknown key(s) {unknown}")
    if "model" not in data:
        raise ConfigError("config: missing key 'model'")
    model = model_from_dict(data["model"])
    base = CLIPConfig.for_model(model, name=data.get("name"))
    pre = _build(PreprocessConfig, data["preprocess"], "preprocess") if "preprocess" in data else base.preprocess
    tok = _build(TokenizerConfig, data["tokenizer"], "tokenizer") if "tokenizer" in data else base.tokenizer
    return CLIPConfig(model=model, preprocess=pre, tokenizer=tok, name=data.get("name"))


def _tower_dict(cfg: Any) -> dict[str, Any]:
    out = {"type": cfg.type}
    out.update(dataclasses.asdict(cfg))
    if out.get("pool") == "eot":  # the default is left out: cliplab versions before the field read the file too
        del out["pool"]
    if "layers" in out and isinstance(out["layers"], tuple):
        out["layers"] = list(out["layers"])
    return out


def model_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    out = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("vision", "text")}
    out["vision"] = _tower_dict(cfg.vision)
    out["text"] = _tower_dict(cfg.text)
    return out


def to_dict(cfg: CLIPConfig) -> dict[str, Any]:
    """JSON-ready form of a resolved config (inverse of :func:`from_dict`)."""
    pre = dataclasses.asdict(cfg.preprocess)
    pre["mean"], pre["std"] = list(pre["mean"]), list(pre["std"])
    return {
        "name": cfg.name,
        "model": model_to_dict(cfg.model),
        "preprocess": pre,
        "tokenizer": dataclasses.asdict(cfg.tokenizer),
    }


# --------------------------------------------------------------------------- architecture files


def _arch_dir() -> Path:
    return Path(str(resources.files("cliplab") / "archs"))


def arch_names() -> list[str]:
    """Names of the shipped architecture files, sorted."""
    return sorted(p.stem for p in _arch_dir().glob("*.json"))


def load_arch(name_or_path: str | Path) -> ModelConfig:
    """Read an architecture by shipped name (``"ViT-B-32"``) or from a JSON file path."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.exists()):
        path = _arch_dir() / f"{name_or_path}.json"
        if not path.exists():
            raise ConfigError(f"unknown architecture {str(name_or_path)!r} (known: {', '.join(arch_names())})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON ({err})") from None
    try:
        return model_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path.name}: {err}") from None
