"""``cliplab train``: contrastive training from a YAML config, dotted overrides and flags."""

from __future__ import annotations

import argparse
import os

# flag -> dotted config key
FLAGS = {
    "model": "model", "init_from": "init_from", "tokenizer": "tokenizer", "train_data": "data.train_data",
    "val_data": "data.val_data",
    "data_format": "data.format", "batch_size": "batch_size", "accum_steps": "accum_steps", "epochs": "epochs",
    "steps": "steps", "lr": "optim.lr", "warmup": "optim.warmup_steps", "output": "output",
    "save_every": "save_every", "keep_last": "keep_last", "eval_every": "eval_every", "resume": "resume",
    "precision": "precision", "loss": "loss",
    "loss_chunk_size": "loss_chunk_size", "seed": "seed", "workers": "data.workers", "device": "device",
    "csv_img_key": "data.csv_img_key", "csv_caption_key": "data.csv_caption_key",
    "csv_separator": "data.csv_separator", "on_bad_sample": "data.on_bad_sample",
    "time_budget_minutes": "time_budget_minutes", "stop_after": "stop_after",
}
SWITCHES = {  # on/off flags: config key -> help
    "grad_checkpointing": "recompute activations in backward: less memory, more time",
    "compile": "torch.compile the model",
    "lock_image": "freeze the image tower (LiT: train the text tower to it)",
    "lock_text": "freeze the text tower",
    "tensorboard": "also log to RUN/tensorboard",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune CLIP (also under torchrun)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. optim.lr=1e-3 data.workers=2")
    p.add_argument("--config", help="YAML or JSON training config")
    p.add_argument("--model", help="architecture name or JSON file (default ViT-Tiny-32px)")
    p.add_argument("--init-from", help="fine-tune from any checkpoint cliplab.load accepts")
    p.add_argument("--tokenizer", help="a BPE learned with `cliplab tokenizer train` (JSON), for a model trained "
                   "from scratch: the text tower takes its vocabulary size and end-of-text id")
    p.add_argument("--train-data", help="CSV/TSV, image folder, or shard pattern 'shards/{00000..00099}.tar'")
    p.add_argument("--val-data")
    p.add_argument("--data-format", choices=["synthetic", "csv", "folder", "wds"])
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--accum-steps", type=int, help="micro-batches per step; all negatives kept (GradCache)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--time-budget-minutes", type=float,
                   help="shrink --steps to fit this wall-clock budget (re-planned from the measured speed)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="warm-up steps")
    p.add_argument("--output", help="run folder")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps")
    p.add_argument("--keep-last", type=int, help="checkpoints kept (the newest; default 3)")
    p.add_argument("--eval-every", type=int, help="evaluate (validation loss with --val-data) every N steps "
                   "(default with --val-data: every min(save-every, steps / 10) steps)")
    p.add_argument("--resume", help="'latest', a run folder or a checkpoint folder")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--loss", choices=["clip", "siglip"])
    p.add_argument("--loss-chunk-size", type=int, help="tiled O(N)-memory loss (CLIP or SigLIP) with this tile size")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="DataLoader workers")
    p.add_argument("--device", help="auto, cpu, cuda")
    p.add_argument("--csv-img-key")
    p.add_argument("--csv-caption-key")
    p.add_argument("--csv-separator")
    p.add_argument("--on-bad-sample", choices=["skip", "error"])
    p.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    for name, says in SWITCHES.items():
        p.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=None, help=says)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cliplab.errors import CliplabError
    from cliplab.train.config import changed_settings, load_train_config
    from cliplab.train.loop import train
    from cliplab.train.state import saved_settings

    flags = {key: getattr(args, name) for name, key in {**FLAGS, **{key: key for key in SWITCHES}}.items()
             if getattr(args, name, None) is not None}
    cfg = load_train_config(args.config, args.overrides, flags)
    saved = saved_settings(cfg.resume, cfg.output) if cfg.resume else None
    if saved is not None:  # a resumed run keeps its settings; what this command line gives goes on top
        base, data = saved, saved.get("data") if isinstance(saved.get("data"), dict) else {}
        if cfg.data.train_data is not None and cfg.data.train_data != data.get("train_data"):
            base = {**saved, "data": {**data, "format": "auto"}}  # new data: its own format, unless given
        cfg = load_train_config(args.config, args.overrides, flags, base=base)
        changes = changed_settings(saved, cfg)
        if changes and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: resuming with changed settings: {'; '.join(changes)}", flush=True)
    try:
        train(cfg)
    except (torch.distributed.DistError, RuntimeError) as err:  # under torchrun: most often a peer that
        if not _lost_peer(err):  # stopped on its own error, which it has printed
            raise
        rank = os.environ.get("RANK", "0")
        raise CliplabError(f"process {rank}: lost contact with the other processes ({_first(err)}); when one "
                           "of them stopped on an error, its message is above") from None
    return 0


def _lost_peer(err: Exception) -> bool:
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    return isinstance(err, torch.distributed.DistError) or any(
        k in str(err) for k in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL"))


def _first(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
