"""Training configuration: frozen dataclasses read from YAML/JSON plus dotted overrides.

``cliplab train --config run.yaml optim.lr=1e-3 data.workers=2 --batch-size 256``: the file is read
first, then the dotted overrides (values parsed as YAML, then checked against the field's type), then the
command-line flags. Unknown keys are a one-line error naming the key.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cliplab.errors import CliplabError

__all__ = ["DataConfig", "OptimConfig", "TrainConfig", "apply_overrides", "changed_settings", "from_dict",
           "load_train_config", "to_dict"]


@dataclass(frozen=True)
class DataConfig:
    format: str = "auto"  # auto (from train_data: none → synthetic) | synthetic | csv | folder | wds
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

    def __post_init__(self) -> None:
        from cliplab.data.csv import separator

        object.__setattr__(self, "csv_separator", separator(self.csv_separator))
        if self.format == "auto":
            object.__setattr__(self, "format", infer_format(self.train_data))
        elif self.format == "synthetic" and self.train_data:
            raise CliplabError(f"data.train_data {self.train_data!r} is not read with data.format synthetic; "
                               "drop one of them (or give --data-format csv|folder|wds)")


def infer_format(train_data: str | None) -> str:
    """The data format a ``--train-data`` value names: none → synthetic, a tar pattern → wds, a CSV/TSV
    file → csv, a folder → folder."""
    if not train_data:
        return "synthetic"
    path = Path(train_data)
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    if path.is_dir():
        return "folder"
    import braceexpand  # comes with webdataset (the `train` extra), which a .tar pattern needs anyway

    try:
        first = next(iter(braceexpand.braceexpand(train_data.split("::")[0])), "")
    except braceexpand.UnbalancedBracesError:
        first = train_data
    if "::" in train_data or first.endswith(".tar"):
        return "wds"
    if not path.exists():
        raise CliplabError(f"{train_data}: no such file or folder")
    raise CliplabError(f"{train_data}: cannot tell its data format (not a .csv/.tsv file, a folder or a .tar "
                       "pattern); give --data-format csv|folder|wds")


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


DEFAULT_MODEL = "ViT-Tiny-32px"  # trained from scratch when neither model nor init_from is given


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None  # architecture name or JSON path; None: DEFAULT_MODEL, or init_from's own
    init_from: str | None = None  # fine-tune: any checkpoint cliplab.load accepts
    tokenizer: str | None = None  # a learned BPE (JSON) for a model trained from scratch; default OpenAI's
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 128  # per process
    accum_steps: int = 1  # micro-batches per step, all negatives kept (gradient caching)
    steps: int | None = None
    epochs: int | None = None
    time_budget_minutes: float | None = None  # shrink `steps` to fit; re-planned from the measured speed
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
    resume: str | None = None  # "latest", a run folder or a checkpoint folder
    device: str = "auto"
    tensorboard: bool = False
    stop_after: int | None = None  # testing aid: stop (as if killed) after this step

    def __post_init__(self) -> None:
        if self.model is None and not self.init_from:
            object.__setattr__(self, "model", DEFAULT_MODEL)
        o, d = self.optim, self.data
        checks = [
            (self.precision in ("fp32", "bf16", "fp16"), f"precision: {self.precision!r} (fp32, bf16 or fp16)"),
            (self.loss in ("clip", "siglip"), f"loss: {self.loss!r} (clip or siglip)"),
            (not (self.tokenizer and self.init_from),
             "tokenizer: a model fine-tuned from a checkpoint keeps its own; --tokenizer is for training from scratch"),
            (d.format in ("synthetic", "csv", "folder", "wds"), f"data.format: {d.format!r}"),
            (d.on_bad_sample in ("skip", "error"), f"data.on_bad_sample: {d.on_bad_sample!r}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (a contrastive batch needs pairs to contrast), "
                                   f"got {self.batch_size}"),
            (self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}"),
            (o.schedule in ("cosine", "constant"), f"optim.schedule: {o.schedule!r}"),
            (self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.save_every >= 1, f"save_every must be >= 1 (steps), got {self.save_every}"),
            (self.keep_last >= 1 and self.log_every >= 1, "keep_last and log_every must be >= 1"),
            (self.eval_every >= 0, f"eval_every must be >= 0 (0: never), got {self.eval_every}"),
            (d.workers >= 0 and d.shuffle_buffer >= 0, "data.workers and data.shuffle_buffer must be >= 0"),
            (o.lr >= 0 and o.weight_decay >= 0 and o.eps > 0 and o.warmup_steps >= 0,
             "optim: lr, weight_decay and warmup_steps must be >= 0, eps > 0"),
            (len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas: two values in [0, 1), got "
                                                                     f"{list(o.betas)}"),
            (self.loss_chunk_size is None or self.loss_chunk_size >= 1, "loss_chunk_size must be >= 1"),
            (math.isfinite(o.lr), f"optim.lr must be finite, got {o.lr}"),
            (o.grad_clip_norm is None or o.grad_clip_norm > 0,
             "optim.grad_clip_norm must be > 0 (or null: no clipping)"),
            (0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}"),
            (self.time_budget_minutes is None or 0 < self.time_budget_minutes < math.inf,
             "time_budget_minutes must be > 0 and finite (or null: no budget)"),
            (0 <= self.seed < 2**63 and 0 <= d.synthetic_seed < 2**63,
             f"seed and data.synthetic_seed must be in [0, 2^63), got {self.seed} and {d.synthetic_seed}"),
            (not (self.lock_image and self.lock_text),
             "lock_image and lock_text together leave only the temperature to train; lock one tower (LiT)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise CliplabError(f"invalid training config: {msg}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


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
        if not isinstance(value, list | tuple) or len(value) != len(typing.get_args(tp)):
            raise CliplabError(f"{where}: expected a list of {len(typing.get_args(tp))} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, typing.get_args(tp), strict=False))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot in the mantissa) as a string
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
            value = {} if value is None else value  # a YAML section with every key commented out
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


def _section(node: dict[str, Any], part: str, key: str) -> dict[str, Any]:
    """``node[part]`` as a mapping to set keys in: created when absent or empty (a YAML ``data:`` with every
    key commented out reads as None)."""
    if node.get(part) is None:
        node[part] = {}
    if not isinstance(node[part], dict):
        raise CliplabError(f"{key}: {part!r} is not a section (it holds {node[part]!r})")
    return node[part]


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    return {k: v for key, value in data.items()
            for k, v in (_flat(value, f"{prefix}{key}.").items() if isinstance(value, dict)
                         else [(f"{prefix}{key}", value)])}


NOT_INHERITED = ("resume", "stop_after")  # settings of one invocation, not of the run


def changed_settings(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``key: old -> new`` for each setting of ``cfg`` that differs from a resumed run's saved one."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    return [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items()
            if k not in NOT_INHERITED and k in old and old[k] != v]


def _is_text(key: str) -> bool:
    """Whether the dotted training-config ``key`` holds text (``str`` or ``str | None``)."""
    cls: Any = TrainConfig
    for part in key.split("."):
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return cls is str or cls == (str | None)


def _parse_value(raw: str) -> Any:
    """An override's value as YAML, with YAML 1.1's ``1e-3`` (a string there) read as a number."""
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and raw.lstrip("+-")[:1].isdigit():
        with contextlib.suppress(ValueError):
            value = float(raw)
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.workers=2"]`` applied onto a nested dict: values parsed as YAML, except that
    a text setting takes the text as typed (``output=2024-01-01``, ``data.csv_separator=|``)."""
    for item in overrides:
        if "=" not in item:
            raise CliplabError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = raw if _is_text(key) and raw not in ("null", "~") else _parse_value(raw)
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = _section(node, part, f"override {key!r}")
        node[parts[-1]] = value
    return data


def load_train_config(path: str | None = None, overrides: list[str] | None = None,
                      flags: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> TrainConfig:
    """``base`` (a resumed run's saved settings) → file → dotted overrides → flags (``{"optim.lr": 1e-3}``),
    validated. A file may be a run's own ``config.json`` / ``train_config.json`` (``{"train": {...}}``)."""
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
            # JSON through json: YAML 1.1 reads a number like 1e-06 (no dot) as a string
            data = (json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)) or {}
        except OSError as err:
            raise CliplabError(f"{path}: cannot read config ({err.strerror})") from None
        except json.JSONDecodeError as err:
            raise CliplabError(f"{path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            what = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise CliplabError(f"{where}: invalid YAML ({what})") from None
        if not isinstance(data, dict):
            raise CliplabError(f"{path}: expected a mapping at the top level")
        if isinstance(data.get("train"), dict) and set(data) <= {"train", "world_size"}:
            data = data["train"]  # what a run writes: its resolved settings, fed back as they are
    base = {k: copy.deepcopy(v) for k, v in (base or {}).items() if k not in NOT_INHERITED}
    data = apply_overrides(_merge(base, data), list(overrides or []))
    for key, value in (flags or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = _section(node, part, key)
        node[last] = value
    return from_dict(data)
