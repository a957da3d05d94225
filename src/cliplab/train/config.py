"""Training configuration: frozen dataclasses read from YAML/JSON plus dotted overrides.

``cliplab train --config run.yaml optim.lr=1e-3 data.workers=2 --batch-size 256``: the file is read
first, then the dotted overrides (values parsed as YAML, then checked against the field's type), then the
command-line flags. Unknown keys are a one-line error naming the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cliplab.errors import CliplabError

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "apply_overrides", "from_dict", "load_train_config",
           "to_dict"]


@dataclass(frozen=True)
class DataConfig:
    format: str = "synthetic"  # synthetic | csv | folder | wds
    train_data: str | None = None
    val_data: str | None = None
    csv_img_key: str = "filepath"
    csv_caption_key: str = "title"
    csv_separator: str = ","
    workers: int = 1
    shuffle_buffer: int = 1000
    resampled: bool = False
    on_bad_sample: str = "skip"  # skip | error
    augment: bool = True  # random resized crop (scale 0.9-1.0) during training
    synthetic_seed: int = 0
    synthetic_two_object_prob: float = 0.5  # share of two-object scenes in the synthetic world
    synthetic_full_caption_prob: float = 0.85  # share of one-object captions naming colour and shape
    synthetic_shape_only_share: float = 0.5  # of the other one-object captions, those naming only the shape


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    grad_clip_norm: float | None = 1.0


@dataclass(frozen=True)
class TrainConfig:
    model: str = "ViT-Tiny-32px"  # architecture name or JSON path (ignored with init_from)
    init_from: str | None = None  # fine-tune: any checkpoint cliplab.load accepts
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 128  # per process
    accum_steps: int = 1  # micro-batches per step, all negatives kept (gradient caching)
    steps: int | None = None
    epochs: int | None = None
    time_budget_minutes: float | None = None  # shrink `steps` to fit, measured after warm-up
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA only)
    loss: str = "clip"  # clip | siglip
    loss_chunk_size: int | None = None  # tiled O(N)-memory loss
    local_loss: bool = True
    grad_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    lock_image: bool = False
    lock_text: bool = False
    save_every: int = 500
    keep_last: int = 3
    eval_every: int = 0
    log_every: int = 10
    output: str = "runs/run"
    resume: str | None = None  # "latest" or a checkpoint folder of this run
    device: str = "auto"
    tensorboard: bool = False
    stop_after: int | None = None  # testing aid: stop (as if killed) after this step

    def __post_init__(self) -> None:
        checks = [
            (self.precision in ("fp32", "bf16", "fp16"), f"precision: {self.precision!r} (fp32, bf16 or fp16)"),
            (self.loss in ("clip", "siglip"), f"loss: {self.loss!r} (clip or siglip)"),
            (self.data.format in ("synthetic", "csv", "folder", "wds"), f"data.format: {self.data.format!r}"),
            (self.data.on_bad_sample in ("skip", "error"), f"data.on_bad_sample: {self.data.on_bad_sample!r}"),
            (self.batch_size >= 1 and self.accum_steps >= 1, "batch_size and accum_steps must be >= 1"),
            (self.optim.schedule in ("cosine", "constant"), f"optim.schedule: {self.optim.schedule!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise CliplabError(f"invalid training config: {msg}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except CliplabError:
                continue
        raise CliplabError(f"{where}: {value!r} is not a valid {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise CliplabError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, typing.get_args(tp), strict=False))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise CliplabError(f"{where}: {value!r} is not a {getattr(tp, '__name__', tp)}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            raise CliplabError(f"unknown training config key {name!r} (known: {', '.join(sorted(known))})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise CliplabError(f"{name}: expected a mapping")
            kwargs[key] = _build(hints[key], value, name)
        else:
            kwargs[key] = _coerce(value, hints[key], name)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data, "")


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    out = dataclasses.asdict(cfg)
    return {k: ({kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else plain(v)) for k, v in out.items()}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.workers=2"]`` applied onto a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise CliplabError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw and raw[0].isdigit():
            with contextlib.suppress(ValueError):
                value = float(raw)  # YAML reads 1e-3 as a string
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CliplabError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def load_train_config(path: str | None = None, overrides: list[str] | None = None,
                      flags: dict[str, Any] | None = None) -> TrainConfig:
    """File → dotted overrides → flags (``{"optim.lr": 1e-3, "batch_size": 64}``), validated."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise CliplabError(f"{path}: cannot read config ({err.strerror})") from None
        except yaml.YAMLError as err:
            raise CliplabError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise CliplabError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, list(overrides or []))
    for key, value in (flags or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return from_dict(data)
