"""Resuming a run: which checkpoint to continue from, and restoring the model, optimizer, scaler, RNG and
data position from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cliplab.config import CLIPConfig
from cliplab.errors import CliplabError
from cliplab.train.config import TrainConfig
from cliplab.train.state import load_trainer_state, resolve_run_dir, set_rng_state
from cliplab.train.step import unwrap

__all__ = ["Position", "restore", "resume_checkpoint", "resumed_tokenizer"]


def _holds_checkpoints(ckpts: Path) -> bool:
    return ckpts.is_dir() and any(p.is_dir() for p in ckpts.glob("step-*"))


def resume_checkpoint(cfg: TrainConfig, run_dir: Path, main: bool) -> Path | None:
    """The checkpoint to resume from (``--resume latest``, a run folder or a checkpoint folder), or ``None``
    for a fresh start, which an output folder already holding checkpoints refuses."""
    from cliplab.checkpoint import WEIGHTS, is_native

    if cfg.resume == "latest":
        found = resolve_run_dir(run_dir)
        if found is None and main and run_dir.is_dir():  # killed before its first checkpoint
            print(f"note: no checkpoint in {run_dir} yet: starting from scratch", flush=True)
        return found
    ckpts = run_dir / "checkpoints"
    if cfg.resume:
        path = Path(cfg.resume)
        found = path if is_native(path) else resolve_run_dir(path)
        if found is None:
            raise CliplabError(f"--resume {cfg.resume}: no such checkpoint (nor a run folder with one)")
        if found.resolve().parent != ckpts.resolve() and _holds_checkpoints(ckpts):
            raise CliplabError(f"{run_dir}: already holds another run's checkpoints; give a new --output to "
                               f"continue from {found}")
        return found
    if _holds_checkpoints(ckpts):
        raise CliplabError(f"{run_dir}: already holds a run's checkpoints; --resume latest continues it, "
                           "or give another --output")
    if (run_dir / WEIGHTS).exists() or (run_dir / "pytorch_model.bin").exists():
        raise CliplabError(f"{run_dir}: holds a model, whose config.json a run would overwrite; give another "
                           "--output (and --init-from it to fine-tune it)")
    return None


def resumed_tokenizer(given: Path | None, ckpt: Path) -> Path | None:
    """The learned tokenizer a resumed run goes on with: the copy its checkpoint holds, whatever has become
    of the file the run was started with. That file, if it is still there, must be the same."""
    from cliplab.checkpoint import read_config

    vocab = read_config(ckpt).tokenizer.vocab
    if not vocab or not (ckpt / vocab).is_file():
        return given
    copy = ckpt / vocab
    if given is not None and given.is_file() and given.read_bytes() != copy.read_bytes():
        raise CliplabError(f"--tokenizer {given}: differs from the tokenizer the run was trained with "
                           f"({copy}); resume with that one, or start a new run")
    return copy


@dataclass
class Position:
    """Where a run stands: its step, planned total, batches drawn from the stream (skipped ones included),
    bad samples so far, and this rank's position in a sharded stream."""

    step: int = 0
    total: int | None = None
    drawn: int = 0
    bad_samples: int = 0
    dropped: int = 0  # good pairs left out so that every rank's share of a batch is equal
    data_position: dict[str, int] | None = None
    seconds: float = 0.0  # training time of the sessions before this one
    budget: dict | None = None  # the time budget's minutes and step cap when the checkpoint was written


def restore(resume_from: Path, cfg: TrainConfig, clip_cfg: CLIPConfig, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, rank: int, world: int,
             notes: bool) -> Position:
    """Load model, optimizer, scaler and RNG states from ``resume_from``; the position to go on from."""
    from cliplab.checkpoint import load_checkpoint, validate_state_dict

    saved_cfg, sd = load_checkpoint(resume_from)
    if saved_cfg.model != clip_cfg.model:
        raise CliplabError(f"--resume {resume_from}: its architecture differs from this run's model "
                           f"({clip_cfg.name or 'given'}); resume with the settings of the run that wrote it")
    validate_state_dict(clip_cfg, sd, source=f"--resume {resume_from} (for model {clip_cfg.name or 'given'})")
    unwrap(model).load_state_dict(sd)
    state = load_trainer_state(resume_from)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError:
        raise CliplabError(f"--resume {resume_from}: its optimizer state is for other trainable parameters "
                           "(--lock-image / --lock-text must be as in the run being resumed)") from None
    for group, decay in zip(optimizer.param_groups, (cfg.optim.weight_decay, 0.0), strict=False):
        group.update(betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, weight_decay=decay)  # this run's settings,
        # not the checkpoint's (as build_optimizer made them: the decayed group, then the rest)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    step, total = int(state["step"]), int(state["total_steps"])
    if cfg.steps is not None and cfg.steps <= step and cfg.steps != total and not cfg.time_budget_minutes:
        raise CliplabError(f"--resume {resume_from}: the checkpoint is at step {step}, so --steps {cfg.steps} "
                           f"leaves nothing to train (give more than {step} steps)")
    if cfg.steps is not None and cfg.steps != total and not cfg.time_budget_minutes:
        if notes:
            print(f"note: the run was scheduled for {total} steps; continuing to {cfg.steps} "
                  "(the learning-rate schedule stretches to the new length)", flush=True)
        total = cfg.steps
    global_batch = cfg.batch_size * cfg.accum_steps * world
    if notes and state.get("global_batch") not in (None, global_batch):
        print(f"note: the run was trained with a global batch of {state['global_batch']}; it goes on with "
              f"{global_batch} ({world} process{'es' if world > 1 else ''} x {cfg.batch_size} x {cfg.accum_steps} "
              "accum), which changes the contrastive task and the data order", flush=True)
    ranks = state.get("rng_ranks") or []  # each process's own states (its GPU's above all), saved under DDP
    set_rng_state(ranks[rank] if len(ranks) == world else state["rng"])
    positions = state.get("data_positions") or []
    if notes and positions and len(positions) != world:
        print(f"note: the run read its shards with {len(positions)} process(es), this one with {world}: the "
              "shard stream starts again, reshuffled, so pairs of the current epoch may be met twice", flush=True)
    return Position(step, total, drawn=int(state.get("batches_drawn", step)),
                     bad_samples=int(state.get("bad_samples", 0)), dropped=int(state.get("dropped_pairs", 0)),
                     data_position=positions[rank] if len(positions) == world else None,
                     seconds=float(state.get("train_seconds", 0.0)), budget=state.get("budget"))
