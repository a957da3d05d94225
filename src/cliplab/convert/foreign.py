"""Reading other projects' checkpoint files without executing their code.

* safetensors: read directly.
* plain PyTorch pickles (OpenAI state dicts, open_clip checkpoints, HF ``pytorch_model.bin``):
  ``torch.load(weights_only=True)``, which refuses any object that is not tensors and containers.
* TorchScript archives (OpenAI's released ``.pt`` files are these) and pickles carrying other objects
  need full unpickling, which runs code from the file: refused unless ``allow_unsafe=True``
  (``--allow-unsafe-pickle``); convert a trusted file once, then use the safetensors result.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from cliplab.config import CLIPConfig, ModelConfig
from cliplab.errors import CliplabError, CliplabWarning

__all__ = ["load_foreign", "read_pickle", "read_safetensors", "with_activation"]

UNSAFE_HINT = ("it needs full unpickling, which can run code from the file; if you trust it, convert it once "
               "(cliplab convert SRC DST --allow-unsafe-pickle, or allow_unsafe=True) and use the converted folder")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CliplabError(f"{path}: corrupt or truncated safetensors file ({err})") from None


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch's magic number, as pickled


def read_pickle(path: Path, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch file: weights only, unless ``allow_unsafe``."""
    if _is_torchscript(path):
        if not allow_unsafe:
            raise CliplabError(f"{path}: a TorchScript archive (OpenAI's format); {UNSAFE_HINT}")
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    with open(path, "rb") as fh:
        start = fh.read(32)
    if start[:1] == b"\x80" and _LEGACY_MAGIC not in start:  # torch.save's legacy format pickles this first
        raise CliplabError(f"{path}: not a PyTorch file (a plain Python pickle, not written by torch.save)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing or loading
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        text = str(err)
        culprit = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "")
        with open(path, "rb") as fh:
            head = fh.read(2)
        if culprit or ((head[:1] == b"\x80" or head == b"PK") and "Weights only load failed" in text):
            detail = f" ({culprit})" if culprit else ""
            raise CliplabError(f"{path}: refused to unpickle{detail}: {UNSAFE_HINT}") from None
        if head[:1] != b"\x80" and head != b"PK":
            raise CliplabError(f"{path}: not a PyTorch file (neither a zip archive nor a pickle)") from None
        msg = text.splitlines()[0] if text else type(err).__name__
        raise CliplabError(f"{path}: unreadable or truncated PyTorch file ({msg})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # an open_clip training checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor | int) for v in obj.values()):
        raise CliplabError(f"{path}: not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def with_activation(cfg: ModelConfig, activation: str) -> ModelConfig:
    """``cfg`` with the activation of each tower that has one (Transformers; ResNets use ReLU) replaced."""
    def tower(t: Any) -> Any:
        return dataclasses.replace(t, activation=activation) if hasattr(t, "activation") else t

    return dataclasses.replace(cfg, vision=tower(cfg.vision), text=tower(cfg.text))


def _unknown_folder(path: Path) -> str:
    """Why a folder with a config.json is no checkpoint cliplab reads, as precisely as the file tells."""
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{path / 'config.json'}: unreadable ({err})"
    if isinstance(data, dict) and "train" in data:
        return f"{path}: a training run without a checkpoint yet (none in {path / 'checkpoints'})"
    if isinstance(data, dict) and "model" in data:
        return f"{path}: a cliplab config.json without its weights ({path / 'model.safetensors'} is missing)"
    return (f"{path}: has a config.json but is neither a cliplab checkpoint (a valid config.json beside "
            "model.safetensors) nor a HF CLIPModel (vision_config and text_config)")


def load_foreign(path: str | Path, allow_unsafe: bool = False, activation: str | None = None,
                 arch: ModelConfig | None = None) -> tuple[CLIPConfig, dict]:
    """Any OpenAI, open_clip or Hugging Face checkpoint → ``(resolved config, cliplab state dict)``, checked
    against each other. ``arch`` replaces the architecture read off the tensor shapes (not for HF folders,
    whose config.json says it). ``activation`` (``quick_gelu`` or ``gelu``) is what a bare state dict cannot
    tell: OpenAI's weights use quick_gelu (the default, with a warning unless a TorchScript archive says
    the file is OpenAI's), open_clip's own models gelu."""
    from cliplab.checkpoint import validate_state_dict
    from cliplab.convert.hf import is_hf_dir, read_hf_dir
    from cliplab.convert.openai import from_openai, infer_config, strip_wrappers

    path = Path(path)
    if is_hf_dir(path):
        if arch is not None or activation is not None:
            raise CliplabError(f"{path}: a HF CLIPModel folder records its architecture and activation; arch= and "
                               "activation= are for bare OpenAI / open_clip state dicts")
        cfg, sd = read_hf_dir(path, allow_unsafe)
    else:
        if path.is_dir() and (path / "config.json").exists():
            raise CliplabError(_unknown_folder(path))
        if path.is_dir() and (path / "model.safetensors").exists():
            raise CliplabError(f"{path}: model.safetensors without the config.json that says its architecture")
        if path.is_dir():
            raise CliplabError(f"{path}: a folder that is neither a cliplab checkpoint, a run, nor a HF CLIPModel")
        if not path.exists():
            raise CliplabError(f"{path}: no such file")
        sd = read_safetensors(path) if path.suffix == ".safetensors" else read_pickle(path, allow_unsafe)
        if any(k.startswith(("vision_model.", "text_model.")) for k in sd):
            raise CliplabError(f"{path}: HF weights without their config.json; load the whole CLIPModel folder")
        if "text.proj.weight" in sd:
            raise CliplabError(f"{path}: cliplab weights without their config.json; load the folder that holds "
                               "both (a file written by `cliplab convert` to a .safetensors name carries its own)")
        sd = {strip_wrappers(k): v for k, v in sd.items()}
        if arch is None and activation is None and not _is_torchscript(path):
            warnings.warn(f"{path}: a bare state dict does not record its activation; assuming OpenAI's "
                          "quick_gelu. open_clip's own models (LAION's and most others) use gelu: pass "
                          "activation='gelu' (CLI: cliplab convert SRC DST --activation gelu)", CliplabWarning,
                          stacklevel=2)
        try:
            model_cfg = arch or infer_config(sd, activation=activation or "quick_gelu")
        except CliplabError as err:
            raise type(err)(f"{path}: {err}") from None
        if arch is not None and activation is not None:
            model_cfg = with_activation(model_cfg, activation)
        cfg, sd = CLIPConfig.for_model(model_cfg), from_openai(sd)
    validate_state_dict(cfg, sd, source=str(path))
    return cfg, sd
