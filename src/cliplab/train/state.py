"""Run-directory checkpoints that survive ``kill -9`` at any moment.

``RUN/checkpoints/step-00000123/`` holds the model in the native format (loadable by ``cliplab.load``)
plus ``trainer.pt`` (optimizer, grad scaler, RNG states, step, data position) saved with plain tensors and
containers so it loads with ``torch.load(weights_only=True)``, and ``train_config.json`` (the resolved
training config). A checkpoint is written into a temporary
folder, fsynced, then renamed; only then is ``RUN/checkpoints/latest`` (a one-line file naming it)
replaced atomically. The last ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cliplab.checkpoint import save_checkpoint
from cliplab.config import CLIPConfig
from cliplab.errors import CliplabError
from cliplab.fileio import atomic_path, fsync_tree, write_json, write_text

__all__ = ["load_trainer_state", "resolve_run_dir", "rng_state", "save_run_checkpoint", "saved_settings",
           "set_rng_state"]

TRAINER = "trainer.pt"
TRAIN_CONFIG = "train_config.json"  # the run's resolved training config, as the run folder's config.json


def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():  # saved per visible GPU; a resume may see fewer
        for index, gpu_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)


def save_run_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, clip_cfg: CLIPConfig,
                        trainer_state: dict[str, Any], keep_last: int = 3,
                        tokenizer_file: Path | None = None, train_config: dict[str, Any] | None = None) -> Path:
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step-{step:08d}"
    tmp = ckpts / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_checkpoint(model, clip_cfg, tmp, tokenizer_file=tokenizer_file)
        with atomic_path(tmp / TRAINER) as t:
            torch.save(trainer_state, t)
        if train_config is not None:
            write_json(tmp / TRAIN_CONFIG, train_config)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save (a full disk) leaves no partial folder behind
        raise
    if final.exists():  # a run resumed from an older step saves this step again: `latest` names a whole one
        write_text(ckpts / "latest", tmp.name + "\n")  # throughout
        old = ckpts / f".old-{final.name}"
        os.replace(final, old)
        os.replace(tmp, final)
        write_text(ckpts / "latest", final.name + "\n")
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        write_text(ckpts / "latest", final.name + "\n")
    _prune(ckpts, final, keep_last)
    for leftover in [*ckpts.glob(".tmp-step-*"), *ckpts.glob(".old-step-*")]:  # of saves a kill cut short
        shutil.rmtree(leftover, ignore_errors=True)  # (`latest` names `final`; the run folder is locked)
    return final


def _prune(ckpts: Path, final: Path, keep_last: int) -> None:
    """Keep the ``keep_last`` checkpoints written last (``final`` always) and remove incomplete ones. Order
    is by when each was written (its trainer state, written once), not by name, since a resume from an older
    step leaves later-named ones, nor by folder time, which a removal cut short by a kill updates."""
    def written(p: Path) -> float | None:
        try:
            return (p / TRAINER).stat().st_mtime
        except FileNotFoundError:
            return None  # a removal cut short (a finished save always has one)

    others = [(written(p), p) for p in ckpts.glob("step-*") if p.is_dir() and p != final]
    whole = sorted((t, p) for t, p in others if t is not None)
    doomed = [p for t, p in others if t is None] + [p for _, p in whole[: max(0, len(whole) - (keep_last - 1))]]
    for old in doomed:
        gone = ckpts / f".old-{old.name}"
        os.replace(old, gone)  # out of the checkpoints' names in one step, then removed
        shutil.rmtree(gone, ignore_errors=True)


def resolve_run_dir(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint a run folder's ``latest`` names (``RUN`` or ``RUN/checkpoints``), else ``None``."""
    path = Path(path)
    for ckpts in (path / "checkpoints", path):
        latest = ckpts / "latest"
        if latest.is_file():
            target = ckpts / latest.read_text().strip()
            if not target.is_dir():
                raise CliplabError(f"{latest}: names {target.name}, which does not exist")
            return target
    return None


def load_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt_dir / TRAINER, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CliplabError(f"{ckpt_dir}: no {TRAINER} (a model-only checkpoint cannot resume training)") from None
    except Exception as err:  # not a torch archive, truncated, or objects beyond plain tensors and containers
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CliplabError(f"{ckpt_dir / TRAINER}: cannot read the trainer state; only tensors and plain "
                           f"containers are loaded, and this file is not that ({first})") from None


def saved_settings(resume: str, output: str) -> dict[str, Any] | None:
    """The training settings stored with the checkpoint ``--resume`` names (``latest`` in ``output``, a run
    folder or a checkpoint folder), or None when there is none to read."""
    from cliplab.checkpoint import is_native

    path = Path(output) if resume == "latest" else Path(resume)
    ckpt = path if resume != "latest" and is_native(path) else resolve_run_dir(path)
    # before its first checkpoint (killed early), a run folder still has the settings it started with
    source = ckpt / TRAIN_CONFIG if ckpt is not None else path / "config.json" if resume == "latest" else None
    try:
        data = json.loads(source.read_text()) if source is not None else None
    except (OSError, ValueError):
        return None
    return data.get("train") if isinstance(data, dict) and isinstance(data.get("train"), dict) else None
