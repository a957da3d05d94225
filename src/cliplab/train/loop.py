"""The training loop: set up, then schedule steps, log, evaluate and checkpoint.

Works on one CPU and under ``torchrun`` (PyTorch DDP, gloo on CPU / NCCL on CUDA); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cliplab.checkpoint import TOKENIZER_FILE
from cliplab.config import CLIPConfig, ModelConfig, TokenizerConfig, load_arch
from cliplab.errors import CliplabError
from cliplab.fileio import write_json, write_text
from cliplab.precision import autocast
from cliplab.train.budget import run_budget
from cliplab.train.config import TrainConfig, to_dict
from cliplab.train.guard import die_with_launcher, lock_run
from cliplab.train.optim import build_optimizer, lr_at
from cliplab.train.resume import Position, restore, resume_checkpoint, resumed_tokenizer
from cliplab.train.state import rng_state, save_run_checkpoint
from cliplab.train.step import train_step, unwrap
from cliplab.train.summary import finish
from cliplab.train.validation import EvalHook, validation_hook

__all__ = ["RunResult", "train"]



@dataclass
class RunResult:
    run_dir: Path
    model: torch.nn.Module
    clip_cfg: CLIPConfig
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_samples: int = 0
    seconds: float = 0.0


def _setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref == "auto":
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            device = torch.device(device_pref)
        except (RuntimeError, TypeError):
            raise CliplabError(f"device {device_pref!r}: not a device name (auto, cpu, cuda, cuda:1, ...)") from None
        if device.type not in ("cpu", "cuda"):
            raise CliplabError(f"device {device_pref!r}: training runs on cpu or cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CliplabError("--device cuda: CUDA is not available")
        if device.type == "cuda" and world > 1:  # under torchrun each process trains on its local GPU
            if device.index is not None and device.index != local:
                raise CliplabError(f"--device {device_pref}: under torchrun process {local} of this node uses "
                                   f"cuda:{local} (LOCAL_RANK); give --device cuda (or auto)")
            device = torch.device("cuda", local)
    if device.type == "cuda" and device.index is not None:  # before NCCL starts, and so that pinned memory
        torch.cuda.set_device(device)  # and caches go to this GPU, not GPU 0
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


SIGLIP_INIT = (math.log(10.0), -10.0)  # the SigLIP paper's initial log-scale and bias


def _same_towers(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two architectures have the same towers, up to what training from them may change: the text
    vocabulary (a learned tokenizer sets it) and the initial temperature and bias."""
    def towers(m: ModelConfig) -> tuple:
        text = {k: v for k, v in dataclasses.asdict(m.text).items() if k not in ("vocab_size", "eot_token_id")}
        return m.embed_dim, m.vision, type(m.text), text

    return towers(a) == towers(b)


def _build_model(cfg: TrainConfig, tokenizer: Path | None,
                 resume_from: Path | None = None) -> tuple[torch.nn.Module, CLIPConfig, Path | None]:
    """The model to train, its config, and the learned tokenizer file it uses (None for OpenAI's), which
    checkpoints keep a copy of under the name :data:`TOKENIZER_FILE`. A resumed fine-tuning run is built
    from its checkpoint, so the model it started from may since have moved."""
    if cfg.init_from:
        from cliplab.api import load_model

        model, clip_cfg, root = load_model(resume_from or cfg.init_from, device="cpu")
        if cfg.model is not None and resume_from is None and not _same_towers(load_arch(cfg.model), clip_cfg.model):
            raise CliplabError(f"--model {cfg.model}: differs from the architecture of --init-from "
                               f"{cfg.init_from} ({clip_cfg.name or 'unnamed'}); a fine-tuned model keeps its "
                               "checkpoint's architecture, so drop --model")
        if cfg.loss == "siglip" and model.logit_bias is None:  # a CLIP-trained model
            # fine-tuned with SigLIP starts from SigLIP's scale and bias: CLIP's scale (100 for OpenAI's) with
            # bias -10 would put the negatives' logits far above zero
            with torch.no_grad():
                model.logit_scale.fill_(SIGLIP_INIT[0])
            model.logit_bias = torch.nn.Parameter(torch.tensor(SIGLIP_INIT[1]))
            clip_cfg = dataclasses.replace(clip_cfg, model=dataclasses.replace(
                clip_cfg.model, init_logit_scale=SIGLIP_INIT[0], init_logit_bias=SIGLIP_INIT[1]))
            model.cfg = clip_cfg.model
        if not clip_cfg.tokenizer.vocab:
            return model, clip_cfg, None
        tok_file = root / clip_cfg.tokenizer.vocab
        return model, dataclasses.replace(clip_cfg, tokenizer=dataclasses.replace(
            clip_cfg.tokenizer, vocab=TOKENIZER_FILE)), tokenizer or tok_file
    from cliplab.model.build import create_model

    arch = load_arch(cfg.model)
    if cfg.loss == "siglip" and arch.init_logit_bias is None:
        arch = dataclasses.replace(arch, init_logit_scale=SIGLIP_INIT[0], init_logit_bias=SIGLIP_INIT[1])
    name = Path(cfg.model).stem if cfg.model.endswith(".json") else cfg.model
    if tokenizer is None:
        return create_model(arch), CLIPConfig.for_model(arch, name=name), None
    from cliplab.tokenizer import get_tokenizer

    tok = get_tokenizer(TokenizerConfig("bpe", arch.text.context_length, tokenizer.name), root=tokenizer.parent)
    arch = dataclasses.replace(arch, text=dataclasses.replace(arch.text, vocab_size=tok.vocab_size,
                                                              eot_token_id=tok.eot_token_id))
    base = CLIPConfig.for_model(arch, name=name)
    tok_cfg = TokenizerConfig("bpe", arch.text.context_length, TOKENIZER_FILE)
    return create_model(arch), CLIPConfig(arch, base.preprocess, tok_cfg, name), tokenizer


def _loss_fn(cfg: TrainConfig) -> Callable:
    from cliplab.loss.distributed import distributed_clip_loss

    def fn(img, txt, scale, bias):
        return distributed_clip_loss(img, txt, scale, bias, local_loss=cfg.local_loss,
                                     chunk_size=cfg.loss_chunk_size, loss=cfg.loss)

    return fn


MAX_UNUSABLE_BATCHES = 100
MAX_SKIPPED_STEPS = 20  # fp16 steps in a row with a non-finite loss: the scale has then fallen 2^20-fold


def _diverged(step: int, what: str, last_save: Path | None) -> CliplabError:
    keep = f"; the last good checkpoint is {last_save}" if last_save else ""
    return CliplabError(f"step {step}: {what} (diverged){keep}")


def _finite(x: float, digits: int) -> float | None:
    """A figure for the JSONL log: null where it is not finite (strict JSON has no NaN or Infinity)."""
    return round(x, digits) if math.isfinite(x) else None


def _agree(n_good: int, bad: list, world: int) -> tuple[int, list, int]:
    """Under DDP every rank must contribute the same number of pairs to the gathered loss, and rank 0 logs
    every rank's bad samples: ``(smallest good count over ranks, all ranks' bad samples, good pairs over
    all ranks)``."""
    if world == 1:
        return n_good, bad, n_good
    counts = [None] * world
    dist.all_gather_object(counts, (n_good, bad))
    return min(n for n, _ in counts), [b for _, rank_bad in counts for b in rank_bad], sum(n for n, _ in counts)


class _Log:
    """A JSONL log (written by rank 0), cut back to the resume step so a resumed run's log has no duplicates.
    ``remember``: also keep the rows in ``history`` (the metrics do; the bad-sample list need not)."""

    def __init__(self, path: Path, active: bool, resume_step: int, remember: bool = True) -> None:
        self.path, self.active, self.remember = path, active, remember
        self.history: list[dict[str, Any]] = []
        if path.exists():
            rows = []
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line torn by a kill mid-write: rewritten from the checkpoint on
                    continue
            kept = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= resume_step]
            if active:
                write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
            self.history = kept if remember else []

    def write(self, *rows: dict[str, Any]) -> None:
        if self.remember:
            self.history.extend(rows)
        if self.active:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(row) + "\n" for row in rows)


def train(cfg: TrainConfig, eval_hooks: tuple[EvalHook, ...] = (), progress: bool = True) -> RunResult:
    """Run (or resume) a training run described by ``cfg``; returns the trained model and its history."""
    ours = not (dist.is_available() and dist.is_initialized())  # a process group set up here is ended here
    with contextlib.ExitStack() as locks:  # the run folder's lock, released however the run ends
        result = _run(cfg, eval_hooks, progress, locks)
    if ours and dist.is_available() and dist.is_initialized():  # after a clean end only: an error leaves the
        dist.destroy_process_group()  # others to their timeout, and a teardown could block on them
    return result


def _lock(run_dir: Path, locks: contextlib.ExitStack) -> bool:
    """Lock ``run_dir`` until ``locks`` closes (where flock exists); True: the folder is seen to."""
    fh = lock_run(run_dir)
    if fh is not None:
        locks.enter_context(fh)
    return True


def _run(cfg: TrainConfig, eval_hooks: tuple[EvalHook, ...], progress: bool,
         locks: contextlib.ExitStack) -> RunResult:
    from tqdm import tqdm

    from cliplab.data.loader import build_train_data
    from cliplab.tokenizer import get_tokenizer
    from cliplab.transforms import image_transform

    rank, world, device = _setup_distributed(cfg.device)
    autocast(device, cfg.precision)  # refuses fp16 without CUDA before any work
    run_dir = Path(cfg.output)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    die_with_launcher()
    locked = main and run_dir.is_dir() and _lock(run_dir, locks)  # before reading its checkpoints
    resume_from = resume_checkpoint(cfg, run_dir, main)
    tok_file = None if cfg.tokenizer is None else Path(cfg.tokenizer)
    if resume_from is not None:  # a learned tokenizer: the run's own copy
        tok_file = resumed_tokenizer(tok_file, resume_from)
    model, clip_cfg, tok_file = _build_model(cfg, tok_file, resume_from)
    if cfg.lock_image:
        unwrap(model).lock("image")
    if cfg.lock_text:
        unwrap(model).lock("text")
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    parts = cfg.accum_steps * world  # pieces a global batch is normalised in
    if parts > 1 and batch_norm and main and progress and resume_from is None:
        how = " and ".join(x for x in (f"{world} processes" if world > 1 else "",
                                       f"{cfg.accum_steps} micro-batches" if cfg.accum_steps > 1 else "") if x)
        print(f"note: this model's BatchNorm normalises each of the {parts} pieces of a batch ({how}) with its own "
              "statistics, so the step approximates one whole batch rather than equalling it", flush=True)
    model.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None

    at = Position(total=cfg.steps) if resume_from is None else restore(
        resume_from, cfg, clip_cfg, model, optimizer, scaler, rank, world, notes=main and progress)
    start, total, drawn, bad_total, dropped = at.step, at.total, at.drawn, at.bad_samples, at.dropped
    tokenizer = get_tokenizer(clip_cfg.tokenizer if tok_file is None else dataclasses.replace(
        clip_cfg.tokenizer, vocab=tok_file.name), root=None if tok_file is None else tok_file.parent)
    transform = image_transform(clip_cfg.preprocess, train=cfg.data.augment)
    data = build_train_data(cfg.data, transform, tokenizer, cfg.batch_size * cfg.accum_steps, rank=rank,
                            world_size=world, seed=cfg.seed, start_step=drawn,
                            image_size=clip_cfg.model.vision.image_size, position=at.data_position,
                            pin_memory=device.type == "cuda")  # so the non-blocking copies below overlap compute
    by_epochs = cfg.steps is None and cfg.epochs is not None and not cfg.time_budget_minutes
    if data.left_out and main and progress and resume_from is None:
        print(f"note: an epoch is {data.steps_per_epoch} whole batch(es); {data.left_out} pair(s) fill no whole "
              "batch and are left out of each epoch (different ones each time: every epoch is reshuffled)",
              flush=True)
    if cfg.steps is not None and cfg.epochs is not None and main and progress and resume_from is None:
        print(f"note: --steps {cfg.steps} decides the length; --epochs {cfg.epochs} is not used", flush=True)
    if total is None or by_epochs:
        if cfg.epochs is None or data.steps_per_epoch is None:
            raise CliplabError("give --steps (or --epochs for a CSV/folder dataset of known size)")
        planned = cfg.epochs * data.steps_per_epoch
        if total is not None and planned != total and main and progress:
            print(f"note: the run was scheduled for {total} steps; --epochs {cfg.epochs} makes it {planned} "
                  "(the learning-rate schedule stretches to the new length)", flush=True)
        total = planned
    budget, budget_state = None, None
    if cfg.time_budget_minutes:  # the run's: earlier sessions' training time counts
        cap = cfg.steps or (cfg.epochs * data.steps_per_epoch if cfg.epochs and data.steps_per_epoch else total)
        budget, total = run_budget(cfg.time_budget_minutes, at.seconds, start, total, cap, at.budget)
        if budget is None and main and progress:
            print(f"nothing to train: the run used its {cfg.time_budget_minutes:g}-minute time budget or ended "
                  "its plan (give a larger --time-budget-minutes or --steps, or time_budget_minutes=null)",
                  flush=True)
        budget_state = {"minutes": cfg.time_budget_minutes, "cap": cap}
    if world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    if cfg.compile:  # around DDP, so that its gradient buckets are reduced while the backward goes on
        model = torch.compile(model)

    if main:
        locked = locked or _lock(run_dir, locks)
        write_json(run_dir / "config.json", {"train": to_dict(cfg), "world_size": world})
    log = _Log(run_dir / "metrics.jsonl", main, start)
    bad_log = _Log(run_dir / "bad_samples.jsonl", main, start - 1,  # rows carry the step they were drawn for
                   remember=False)
    loss_fn = _loss_fn(cfg)
    board = _tensorboard(run_dir) if cfg.tensorboard and main else None
    hooks = list(eval_hooks)  # rank 0 runs these alone; every rank takes part in the validation
    eval_every = cfg.eval_every
    validate = None
    if cfg.data.val_data:
        validate = validation_hook(cfg, clip_cfg, tokenizer, device, rank=rank, world_size=world)
        eval_every = eval_every or min(cfg.save_every, max(1, total // 10))
    global_batch = cfg.batch_size * cfg.accum_steps * world
    if main and progress:
        print(f"training {clip_cfg.name or 'model'} for {total} steps, global batch {global_batch} "
              f"({world} process{'es' if world > 1 else ''} x {cfg.batch_size} x {cfg.accum_steps} accum), "
              f"{cfg.precision} on {device}", flush=True)
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=start, disable=not (main and progress), unit="step", dynamic_ncols=True)
    step = start
    last_save = None
    samples_seen = 0
    if start >= total and main and progress and (budget is not None or not cfg.time_budget_minutes):
        print(f"nothing to train: the checkpoint is at step {start} of {total} "
              "(give more --steps or --epochs to go on)", flush=True)
    try:  # the bar ends its line before any error message
        unusable = 0  # consecutive batches with fewer than 2 good pairs
        skipped_in_a_row = 0  # consecutive fp16 steps whose loss was not finite
        while step < total:
            batch = next(data.batches)
            drawn += 1
            n_good, bad, n_all = _agree(len(batch), batch.bad, world)
            dropped += n_all - (n_good * world if n_good >= 2 else 0)  # good pairs no step used
            if bad:
                bad_total += len(bad)
                bad_log.write(*({"step": step, "source": b.source, "reason": b.reason} for b in bad))
                if cfg.data.on_bad_sample == "error":
                    b = bad[0]
                    raise CliplabError(f"bad sample {b.source}: {b.reason} (--on-bad-sample skip to skip such samples)")
            if n_good < 2:  # on some rank a batch with almost nothing usable: nothing to contrast
                unusable += 1
                if unusable >= MAX_UNUSABLE_BATCHES:
                    raise CliplabError(f"no usable pairs in {unusable} batches in a row ({bad_total} bad samples, "
                                       f"listed in {run_dir / 'bad_samples.jsonl'}): check --train-data and "
                                       "--data-format")
                continue
            unusable = 0
            lr = lr_at(step, cfg.optim, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = batch.images[:n_good].to(device, non_blocking=True)  # every rank contributes n_good pairs
            texts = batch.texts[:n_good].to(device, non_blocking=True)
            if skipped_in_a_row >= MAX_SKIPPED_STEPS:
                raise _diverged(step, f"the loss was not finite in {skipped_in_a_row} fp16 steps in a row, whatever "
                                      "the loss scale", last_save)
            try:
                stats = train_step(model, images, texts, optimizer, loss_fn, accum_steps=cfg.accum_steps, device=device,
                                   precision=cfg.precision, scaler=scaler, grad_clip_norm=cfg.optim.grad_clip_norm)
            except FloatingPointError as err:
                raise _diverged(step + 1, str(err), last_save) from None
            if world > 1:  # log the loss of the global batch, not rank 0's share
                t = torch.tensor([stats["loss"]], device=device)
                dist.all_reduce(t)
                stats["loss"] = float(t) / world
            skipped_in_a_row = skipped_in_a_row + 1 if not math.isfinite(stats["loss"]) else 0
            step += 1
            samples_seen += images.shape[0] * world
            elapsed = time.perf_counter() - t0
            if budget is not None:
                total = bar.total = budget.plan(step, elapsed, total)
                if world > 1:  # rank 0's clock decides for every rank
                    t = torch.tensor([total], device=device)
                    dist.broadcast(t, 0)
                    total = bar.total = int(t)
            scale = float(unwrap(model).scale().detach())
            if step % cfg.log_every == 0 or step == total:
                log.write({"step": step, "loss": _finite(stats["loss"], 6), "lr": lr, "scale": round(scale, 4),
                           "grad_norm": _finite(stats["grad_norm"], 4),
                           "samples_per_s": round(samples_seen / elapsed, 1), "time": round(elapsed, 2),
                           **({"skipped": True} if stats["skipped"] else {})})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{lr:.2e}", T=f"{1 / scale:.4f}",
                            sps=f"{samples_seen / elapsed:.0f}")
            bar.update(1)
            if board is not None and (step % cfg.log_every == 0 or step == total):
                for key, value in (("loss", stats["loss"]), ("lr", lr), ("logit_scale", scale)):
                    board.add_scalar(f"train/{key}", value, step)
            if eval_every and step % eval_every == 0 and (hooks or validate):
                row = {"step": step, **(validate(unwrap(model), step) if validate else {})}
                for hook in hooks if main else ():
                    row.update(hook(unwrap(model), step))
                log.write(row)
                if board is not None:
                    for key, value in row.items():
                        if key != "step" and isinstance(value, int | float):
                            board.add_scalar(f"eval/{key}", value, step)
            if cfg.stop_after is not None and step >= cfg.stop_after:
                return RunResult(run_dir, unwrap(model), clip_cfg, step, log.history, bad_total, elapsed)
            saving = step % cfg.save_every == 0 or step == total
            if saving and data.position is not None:  # every rank's place in its own stream
                positions: list[Any] = [data.position()]
                if world > 1:
                    positions = [None] * world
                    dist.all_gather_object(positions, data.position())
            rngs: list[Any] = [rng_state()] if saving else []
            if saving and world > 1:  # every rank's random states: each drives its own GPU's generator
                rngs = [None] * world
                dist.all_gather_object(rngs, rng_state())
            if main and saving:
                state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                         "rng": rngs[0], "rng_ranks": rngs if world > 1 else None, "step": step,
                         "total_steps": total, "global_batch": global_batch,
                         "data_positions": positions if data.position is not None else None, "bad_samples": bad_total,
                         "dropped_pairs": dropped, "batches_drawn": drawn,
                         "train_seconds": at.seconds + time.perf_counter() - t0, "budget": budget_state}
                last_save = save_run_checkpoint(run_dir, step, unwrap(model), clip_cfg, state, cfg.keep_last, tok_file,
                                                train_config={"train": to_dict(cfg), "world_size": world})
    finally:
        bar.close()
        data.close()
    elapsed = time.perf_counter() - t0
    if main:
        finish(run_dir, log.history, bad_total, step, at.seconds + elapsed, progress, dropped)  # all sessions
    return RunResult(run_dir, unwrap(model), clip_cfg, step, log.history, bad_total, elapsed)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: TensorBoard logging needs the tensorboard package (pip install 'cliplab[train]'); skipped")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))
