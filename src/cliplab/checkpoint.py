"""cliplab's native checkpoint format: safetensors weights + the resolved config.

Two layouts, both self-describing:

* a directory holding ``model.safetensors`` and ``config.json`` (plus, for a learned tokenizer, its
  vocabulary file named in ``config.json``);
* a single ``.safetensors`` file whose metadata key ``cliplab_config`` holds the same JSON.

Every load validates the tensors against the config (names and shapes), so weights can never be
evaluated under an architecture they were not trained with.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cliplab import __version__
from cliplab.config import CLIPConfig, ConfigError, from_dict, to_dict
from cliplab.errors import CliplabError
from cliplab.fileio import atomic_path, write_json

__all__ = [
    "CheckpointError",
    "expected_shapes",
    "is_native",
    "load_checkpoint",
    "read_config",
    "save_checkpoint",
    "validate_state_dict",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_FILE = "tokenizer.json"  # a learned tokenizer, beside the weights of a run's checkpoints
RESERVED = (WEIGHTS, CONFIG, "trainer.pt", "train_config.json")  # what a tokenizer copy must not overwrite
META_KEY = "cliplab_config"


class CheckpointError(CliplabError):
    """A checkpoint is missing, corrupt, or does not match its config."""


def _state_dict(model_or_sd: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else dict(model_or_sd)
    # safetensors refuses shared or non-contiguous storage: give every tensor its own contiguous copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_checkpoint(
    model_or_sd: torch.nn.Module | Mapping[str, torch.Tensor],
    cfg: CLIPConfig,
    path: str | os.PathLike[str],
    tokenizer_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Write weights + resolved config atomically. ``path`` ending in ``.safetensors`` gives one file,
    anything else a directory. ``tokenizer_file`` (a learned BPE) is copied beside a directory checkpoint."""
    path = Path(path)
    sd = _state_dict(model_or_sd)
    validate_state_dict(cfg, sd, source=str(path))
    meta = to_dict(cfg)
    meta["cliplab_version"] = __version__
    if path.suffix == ".safetensors":
        if tokenizer_file is not None:
            raise CheckpointError(f"{path}: a learned tokenizer needs a directory checkpoint, not a single file")
        with atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata={META_KEY: json.dumps(meta)})
        return path
    check_model_output(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_file is not None:
        name = cfg.tokenizer.vocab or Path(tokenizer_file).name
        if name in RESERVED:
            raise CheckpointError(f"{path}: the tokenizer cannot be stored as {name}, a checkpoint's own file")
        if Path(tokenizer_file).resolve() != (path / name).resolve():
            with atomic_path(path / name) as tmp:
                shutil.copyfile(tokenizer_file, tmp)
    with atomic_path(path / WEIGHTS) as tmp:
        save_file(sd, str(tmp))
    write_json(path / CONFIG, meta)  # written last: a directory with a config is complete
    return path


def check_model_output(path: str | os.PathLike[str]) -> None:
    """Refuse to write a model into a training run's folder, whose config.json is the run's settings."""
    path = Path(path)
    if not path.is_dir():
        return
    try:
        run = (path / "checkpoints").is_dir() or "train" in json.loads((path / CONFIG).read_text())
    except (OSError, ValueError, TypeError):
        run = False
    if run:
        raise CheckpointError(f"{path}: is a training run's folder; write the model to another folder")


def is_native(path: str | os.PathLike[str]) -> bool:
    """True for a cliplab checkpoint directory or a single file carrying cliplab metadata."""
    path = Path(path)
    if path.is_dir():
        if not (path / WEIGHTS).exists() or not (path / CONFIG).exists():
            return False
        try:
            data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
            return False
        return isinstance(data, dict) and "model" in data  # a HF config.json has no "model"
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as fh:
                return META_KEY in (fh.metadata() or {})
        except (SafetensorError, OSError):
            return False
    return False


def read_config(path: str | os.PathLike[str]) -> CLIPConfig:
    """The resolved config of a native checkpoint, without reading the weights."""
    path = Path(path)
    try:
        if path.is_dir():
            data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        else:
            with safe_open(str(path), framework="pt") as fh:
                data = json.loads((fh.metadata() or {})[META_KEY])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {CONFIG} (not a cliplab checkpoint?)") from None
    except (KeyError, ValueError, SafetensorError, OSError) as err:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{path}: unreadable checkpoint config ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: unreadable checkpoint config (a JSON {type(data).__name__}, not an object)")
    data.pop("cliplab_version", None)
    try:
        return from_dict(data)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """Read and validate a native checkpoint: ``(config, state_dict)`` on CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    cfg = read_config(path)
    weights = path / WEIGHTS if path.is_dir() else path
    try:
        with safe_open(str(weights), framework="pt") as fh:
            sd = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: corrupt or truncated safetensors file ({err})") from None
    validate_state_dict(cfg, sd, source=str(path))
    return cfg, sd


def _meta_state(cfg: CLIPConfig) -> dict[str, torch.Tensor]:
    """The architecture's parameters and buffers on the meta device (no memory)."""
    from cliplab.model.build import create_model

    with torch.device("meta"):
        model = create_model(cfg.model)
    return model.state_dict()


def expected_shapes(cfg: CLIPConfig) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the architecture, computed on the meta device (no memory)."""
    return {k: tuple(v.shape) for k, v in _meta_state(cfg).items()}


def _kind(t: torch.Tensor) -> str:
    if t.is_floating_point():
        return "floating-point"
    if t.is_complex() or t.dtype == torch.bool:
        return "other"
    return "integer"


def validate_state_dict(cfg: CLIPConfig, sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise a one-line :class:`CheckpointError` unless ``sd`` has exactly the config's names and shapes, and
    floating-point tensors where the model has them (any precision) and real numbers for its counters
    (BatchNorm's ``num_batches_tracked``, which a checkpoint cast to half wholesale holds as floats)."""
    meta = _meta_state(cfg)
    want = {k: tuple(v.shape) for k, v in meta.items()}
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: tensors do not match the config: {', '.join(parts)}")
    for key, shape in want.items():
        if tuple(sd[key].shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {key} has shape {list(sd[key].shape)} but the config expects {list(shape)}"
            )
        kind, need = _kind(sd[key]), _kind(meta[key])
        if kind != need and not (need == "integer" and kind == "floating-point"):  # a counter cast to half
            raise CheckpointError(f"{source}: tensor {key} is {str(sd[key].dtype).removeprefix('torch.')}; the model "
                                  f"needs {_kind(meta[key])} values there")
