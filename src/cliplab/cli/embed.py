"""``cliplab embed``: embed a collection of images (and optionally captions) into an embedding store."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from cliplab.cli.args import count

SKIPPED = "skipped.jsonl"  # in the store: every image and text the last run skipped, with its source and reason
_SHOWN = 20  # skipped items also named on stderr


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed images (folder, CSV or shards) into a resumable embedding store")
    p.add_argument("--checkpoint", required=True, help="anything cliplab.load accepts")
    p.add_argument("--images", required=True,
                   help="image folder, CSV, or WebDataset shards (a .tar or a pattern like 'shards/{0000..0009}.tar')")
    p.add_argument("--output", required=True, help="embedding store folder (created, or resumed)")
    p.add_argument("--texts", help="also embed texts: a .txt file (one per line) or a CSV (--csv-caption-key)")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--workers", type=count(0), default=0, help="DataLoader workers decoding images")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored vector type")
    p.add_argument("--part-size", type=count(1), default=4096, help="vectors per atomically written part")
    p.add_argument("--csv-img-key", default="filepath")
    p.add_argument("--csv-caption-key", default=None)
    p.add_argument("--csv-separator", default=",")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true",
                   help="compile the image tower first (torch.compile; 20-35 s once, then a few %% faster)")
    p.set_defaults(func=run)


def _texts(path: str, key: str | None, sep: str) -> tuple[list[str], int, list[Any]]:
    """The distinct texts of a .txt file (one per line) or a CSV column, in first-seen order, how many
    repeats were dropped (a store of texts holds each once, whether it is built in one run or several), and
    the lines skipped as not UTF-8 (the store holds UTF-8 text only), each as a ``BadSample`` naming its
    ``file:LINE``: one such line is listed and counted like an unreadable image, never fatal."""
    from cliplab.data.batch import BadSample
    from cliplab.data.csv import read_rows
    from cliplab.errors import CliplabError

    src = Path(path)
    if src.suffix.lower() in (".csv", ".tsv"):
        if not key:
            raise CliplabError(f"{src}: give --csv-caption-key to embed captions from a CSV")
        rows, lines = read_rows(src, [key], sep)
        numbered, what = [(text, line) for (text,), line in zip(rows, lines, strict=True)], "caption"
    else:
        try:  # -sig: drop a BOM, as a CSV's is
            with open(src, encoding="utf-8-sig", errors="surrogateescape") as fh:
                numbered, what = [(text, n) for n, text in enumerate(fh, 1)], "line"
        except OSError as err:
            raise CliplabError(f"{src}: cannot read texts ({err.strerror or err})") from None
    texts, skipped = [], []
    for text, line in numbered:
        if _is_utf8(text):
            texts.append(text)
        else:
            skipped.append(BadSample(f"{src}:{line}", f"{what} is not valid UTF-8"))
    texts = [t.strip() for t in texts if t.strip()]  # a CSV's captions as a .txt file's lines
    distinct = list(dict.fromkeys(texts))
    return distinct, len(texts) - len(distinct), skipped


def _is_utf8(text: str) -> bool:
    """False for text read with ``errors="surrogateescape"`` from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _agree(err: BaseException | None, world: int) -> None:
    """Under torchrun every process learns whether any failed, so none goes on writing alone: the one that
    failed raises its own error, the others one naming it."""
    if world > 1:
        import torch.distributed as dist

        from cliplab.errors import CliplabError

        errors: list[str | None] = [None] * world
        dist.all_gather_object(errors, None if err is None else " ".join(str(err).split()))
        failed = next(((r, e) for r, e in enumerate(errors) if e), None)
        if err is None and failed is not None:
            raise CliplabError(f"process {failed[0]} stopped: {failed[1]}")
    if err is not None:
        raise err


def _gathered(report: Any, world: int) -> tuple[int, int, int, list[Any], float]:
    """Every process's (embedded, already stored, of those under another caption, skipped, seconds), summed."""
    mine = (report.embedded, report.already_done, report.other_caption, report.skipped, report.seconds)
    if world == 1:
        return mine
    import torch.distributed as dist

    every: list[Any] = [None] * world
    dist.all_gather_object(every, mine)
    return (sum(r[0] for r in every), sum(r[1] for r in every), sum(r[2] for r in every),
            [b for r in every for b in r[3]], max(r[4] for r in every))


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", 1))
    with contextlib.ExitStack() as locks:  # the store's lock, released however the run ends
        if world == 1:
            return _run(args, 0, 1, locks)
        import torch.distributed as dist

        dist.init_process_group("gloo")  # agreement and a barrier only: the vectors go to each rank's own parts
        try:
            return _run(args, dist.get_rank(), world, locks)
        finally:
            dist.destroy_process_group()


def _run(args: argparse.Namespace, rank: int, world: int, locks: contextlib.ExitStack) -> int:
    import torch

    from cliplab.api import load_model, resolve_device
    from cliplab.infer.embed import embed_collection, embed_texts, list_items
    from cliplab.infer.store import EmbeddingStore, lock_store, model_id, weights_fingerprint
    from cliplab.precision import autocast
    from cliplab.tokenizer import get_tokenizer
    from cliplab.transforms import Preprocess

    failure = None
    try:  # every input is read before anything is written: a wrong path costs no store and no embedding time
        device = resolve_device(args.device)
        if device.type == "cuda" and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        model, cfg, root = load_model(args.checkpoint, device=device)
        items = list_items(args.images, args.csv_img_key, args.csv_caption_key, args.csv_separator)
        texts, repeats, bad_texts = (_texts(args.texts, args.csv_caption_key, args.csv_separator) if args.texts
                                     else (None, 0, []))
        autocast(device, args.precision)  # refuses fp16 without CUDA before the store exists
        made_by = {"model_id": model_id(args.checkpoint), "weights": weights_fingerprint(model)}
    except Exception as err:  # every process must hear of it; _agree re-raises it here
        failure = err
    _agree(failure, world)
    try:  # each rank locks its own manifest before reading the store: a second run is refused, not merged
        lock = lock_store(args.output, rank)
        if lock is not None:
            locks.enter_context(lock)
        store = EmbeddingStore.open_or_create(args.output, dim=cfg.model.embed_dim, dtype=args.dtype, rank=rank,
                                              **made_by)
    except Exception as err:
        failure = err
    _agree(failure, world)
    if args.compile:
        model.compile_for_inference()
    barrier = None
    if world > 1:
        import torch.distributed as dist

        barrier = dist.barrier
    report = embed_collection(model, Preprocess(cfg.preprocess), items, store, batch_size=args.batch_size,
                              workers=args.workers, precision=args.precision, part_size=args.part_size,
                              rank=rank, world_size=world, progress=rank == 0, snapshot_taken=barrier)
    embedded, already, other_caption, skipped, seconds = _gathered(report, world)
    if rank == 0:
        _report_skipped(skipped + bad_texts, store.path)
        rate = embedded / seconds if seconds else 0.0
        listed = f" (listed in {store.path / SKIPPED})" if skipped else ""
        kept = f" ({other_caption} of them with another caption or none, kept)" if other_caption else ""
        print(f"embedded {embedded} image(s) ({rate:.1f} img/s), {already} already in the store{kept}, skipped "
              f"{len(skipped)} unreadable or unusable{listed}")
    if texts is not None and rank == 0:
        import numpy as np

        tstore = EmbeddingStore.open_or_create(os.path.join(args.output, "texts"), dim=cfg.model.embed_dim,
                                               dtype=args.dtype, **made_by)
        done = tstore.done_keys("caption")
        todo = [t for t in texts if t not in done]
        if todo:
            vecs = embed_texts(todo, model, get_tokenizer(cfg.tokenizer, root=root), precision=args.precision)
            tstore.append_part(np.asarray(vecs), [{"path": None, "caption": t} for t in todo])
        dropped = f", {repeats} repeated line(s) counted once" if repeats else ""
        if bad_texts:
            dropped += f", skipped {len(bad_texts)} not valid UTF-8 (listed in {store.path / SKIPPED})"
        print(f"embedded {len(todo)} text(s) into {tstore.path}, {len(texts) - len(todo)} already there{dropped}")
    return 0


def _report_skipped(skipped: list[Any], store: Path) -> None:
    """The first few skipped items on stderr; all of them, with their sources and reasons, in STORE/skipped.jsonl.
    Every run retries what is not yet stored, so the file lists what this run skipped: it replaces the last
    run's, and goes when nothing was skipped."""
    from cliplab.fileio import write_text

    for bad in skipped[:_SHOWN]:
        print(f"skipped {bad.source}: {bad.reason}", file=sys.stderr)
    if len(skipped) > _SHOWN:
        print(f"... and {len(skipped) - _SHOWN} more", file=sys.stderr)
    if skipped:
        write_text(store / SKIPPED, "".join(json.dumps({"source": b.source, "reason": b.reason}) + "\n"
                                            for b in skipped))
    else:
        (store / SKIPPED).unlink(missing_ok=True)
