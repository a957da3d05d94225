"""WebDataset tar shards: reading for training (via the ``webdataset`` library) and writing from a CSV or folder.

A sample is the group of tar members that share a key: an image (``.jpg``, ``.png``, ``.webp`` or another
extension a folder of images may hold) and a caption
(``.txt``, or ``.json`` with a ``caption``/``text``/``title`` field). Shards are shuffled per epoch,
samples go through a shuffle buffer, and shards are dealt anew each epoch across ranks and then DataLoader
workers so no sample is read twice per epoch; ``resampled=True`` draws shards with replacement forever (for step-based
training on many nodes). Unreadable shards and samples come out as :class:`BadSample`.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import random
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path

import braceexpand
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from cliplab.data.batch import BadSample
from cliplab.data.folder import IMAGE_EXTENSIONS
from cliplab.data.samples import Tokenizer, Transform, make_pair, seeded
from cliplab.errors import CliplabError, CliplabWarning
from cliplab.fileio import atomic_path, fsync_dir

__all__ = ["ShardDataset", "expand_urls", "member_key", "write_shards"]

MAX_SHARDS = 100_000  # five-digit names: the brace pattern {00000..99999} and the readers' checks rely on them
INCOMPLETE = "shards.incomplete"  # written first by write_shards as PREFIX + INCOMPLETE, removed when all are out

IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # what a folder of images may hold
TEXT_FIELDS = ("caption", "text", "title")
_FORMAT_KEYS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}


def member_key(path: str | os.PathLike[str]) -> str | None:
    """The tar member suffix an image file is stored under: its extension where the readers know it, else
    its format read from the file's header (a file without extension, a ``.jfif``); None if neither works."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext in IMAGE_KEYS:
        return "jpg" if ext == "jpeg" else ext
    try:
        with Image.open(path) as img:
            return _FORMAT_KEYS.get(img.format)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def expand_urls(pattern: str | Iterable[str]) -> list[str]:
    """``shards/{00000..00009}.tar`` → ten paths; several patterns may be joined with ``::``."""
    parts = pattern.split("::") if isinstance(pattern, str) else list(pattern)
    urls = [u for p in parts for u in braceexpand.braceexpand(p)]
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).exists()]
    if missing:
        raise CliplabError(f"shard {missing[0]} not found ({len(missing)} of {len(urls)} missing)")
    folder = next((u for u in local if Path(u).is_dir()), None)
    if folder is not None:
        raise CliplabError(f"{folder}: a folder, not a tar shard (for a folder of images: --data-format folder)")
    if not urls:
        raise CliplabError(f"no shards match {pattern!r}")
    for url in local:
        marker = _unfinished_marker(Path(url))
        if marker is not None:
            raise CliplabError(f"{url}: written by a `cliplab shards` run that did not finish ({marker} is still "
                               "there); run it again to replace the partial set")
    return urls


def _unfinished_marker(shard: Path) -> Path | None:
    """The marker of an unfinished :func:`write_shards` run that ``shard`` belongs to, if there is one."""
    stem = shard.name.removesuffix(".tar")
    if len(stem) < 5 or not stem[-5:].isdigit():
        return None
    marker = shard.with_name(stem[:-5] + INCOMPLETE)
    return marker if marker.exists() else None


def _split_by_rank(urls: list[str], rank: int, world_size: int) -> list[str]:
    return list(urls)[rank::world_size]


class _Errors:
    """Collects the exceptions webdataset reports, so they can be yielded as BadSamples."""

    def __init__(self) -> None:
        self.items: list[BadSample] = []

    def __call__(self, exn: Exception) -> bool:
        # webdataset's tar errors carry (reason, stream, url) in args
        args = [a for a in exn.args if isinstance(a, str)]
        source = getattr(exn, "filename", None) or (args[-1] if len(args) > 1 else "shard")
        self.items.append(BadSample(str(source), f"unreadable tar data ({args[0] if args else exn})"))
        return True  # keep going


class ShardDataset(IterableDataset):
    def __init__(
        self,
        pattern: str | Iterable[str],
        transform: Transform,
        tokenizer: Tokenizer,
        *,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.urls = expand_urls(pattern)
        if not resampled and len(self.urls) < world_size:
            raise CliplabError(f"{len(self.urls)} shard(s) for {world_size} ranks: each rank needs at least one")
        if not resampled and len(self.urls) % world_size and rank == 0:
            warnings.warn(f"{len(self.urls)} shards over {world_size} processes: ranks hold unequal shares, so a "
                          "rank with fewer shards starts its next epoch sooner and sees its samples more often; use "
                          f"a multiple of {world_size} shards or data.resampled=true", CliplabWarning, stacklevel=2)
        self.transform, self.tokenizer = transform, tokenizer
        self.shuffle_buffer, self.resampled, self.seed = shuffle_buffer, resampled, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.batch_size = 1  # items per DataLoader batch (set by the loader): positions saved before per-worker counts
        self.skip_items: dict[str, int] = {}  # items each worker already yielded this epoch (resume)
        self.first_worker = 0  # the worker whose batch comes next (resume)

    def set_epoch(self, epoch: int, skip_items: dict[str, int] | None = None, first_worker: int = 0) -> None:
        """Start epoch ``epoch``; a resumed one skips what each worker already yielded and starts at the worker
        whose turn it was. The DataLoader always takes its first batch from its worker 0, so its worker ``i``
        plays the part of worker ``(i + first_worker) mod W``: the same shards, in the same turn order."""
        self.epoch, self.skip_items, self.first_worker = epoch, dict(skip_items or {}), first_worker

    def _role(self) -> tuple[int, int]:
        """(the worker this DataLoader worker plays, the number of workers)."""
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        n = info.num_workers if info is not None else 1
        return ((info.id if info is not None else 0) + self.first_worker) % n, n

    def __iter__(self) -> Iterator[tuple | BadSample]:
        role, n_workers = self._role()
        skip = int(self.skip_items.get(str(role), 0))
        seen = 0
        errors = _Errors()
        seed = self.seed + 1000 * self.epoch + self.rank
        if self.resampled:  # every rank and worker draws shards with replacement from its own seeded stream
            pipeline = wds.DataPipeline(
                wds.ResampledShards(self.urls, seed=self.seed + 1000 * self.epoch,
                                    worker_seed=lambda: self.rank * 1000 + role, deterministic=True),
                wds.tarfile_to_samples(handler=errors),
            )
        else:  # the shard list is shuffled the same way on every rank and worker before it is split, so
            # each epoch deals different shards to each of them; webdataset then shuffles each one's share
            urls = list(self.urls)
            random.Random(self.seed + 1000 * self.epoch).shuffle(urls)
            pipeline = wds.WebDataset(
                urls,
                handler=errors,
                shardshuffle=1000,
                nodesplitter=functools.partial(_split_by_rank, rank=self.rank, world_size=self.world_size),
                workersplitter=lambda shards: itertools.islice(shards, role, None, n_workers),
                empty_check=False,
                seed=seed,
            )
        if self.shuffle_buffer > 1:
            pipeline.append(wds.shuffle(self.shuffle_buffer, seed=seed))
        for raw in pipeline:
            while errors.items:
                seen += 1
                bad = errors.items.pop(0)
                if seen > skip:
                    yield bad
            seen += 1
            if seen > skip:  # already-consumed samples are not decoded again
                yield self._decode(raw)
        yield from errors.items

    def _decode(self, raw: dict) -> tuple | BadSample:
        source = f"{raw.get('__url__', 'shard')}/{raw.get('__key__', '?')}"
        image = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
        if image is None:
            return BadSample(source, f"no image member ({'/'.join(IMAGE_EXTENSIONS)})")
        if "txt" in raw:
            caption = raw["txt"]
        elif "json" in raw:
            try:
                meta = json.loads(raw["json"])
            except (ValueError, TypeError):
                return BadSample(source, "json member is not valid JSON")
            texts = [meta[f] for f in TEXT_FIELDS if isinstance(meta, dict) and isinstance(meta.get(f), str)]
            if not texts:
                return BadSample(source, f"json member has no {'/'.join(TEXT_FIELDS)} field holding a string")
            caption = next((t for t in texts if t.strip()), texts[0])  # an empty one: make_pair says so
        else:
            return BadSample(source, "no caption member (.txt or .json)")
        # augmentation drawn from (seed, epoch, sample): resumable
        transform = seeded(self.transform, self.seed, self.epoch, zlib.crc32(source.encode()))
        return make_pair(io.BytesIO(image), caption, source, transform, self.tokenizer)


def write_shards(
    samples: Iterable[tuple[str | os.PathLike[str], str]],
    out_dir: str | os.PathLike[str],
    per_shard: int = 1000,
    prefix: str = "",
) -> list[Path]:
    """Write (image file, caption) pairs into ``out_dir/{prefix}00000.tar``...; each shard appears atomically.

    Image bytes are stored as they are (no re-encoding), under the suffix :func:`member_key` gives. A marker
    file (``{prefix}shards.incomplete``) stands beside the shards until the last one is written, so a killed or
    failed run's partial set is refused by the reader and replaced by the next run.
    """
    out = Path(out_dir)
    if isinstance(samples, Sized) and -(-len(samples) // per_shard) > MAX_SHARDS:  # said before any writing
        raise CliplabError(f"{out}: {len(samples):,} samples make more than {MAX_SHARDS:,} shards of {per_shard}; "
                           "give a larger --per-shard (shard names have five digits)")
    marker = out / f"{prefix}{INCOMPLETE}"
    old = sorted(out.glob(f"{prefix}[0-9][0-9][0-9][0-9][0-9].tar")) if out.is_dir() else []
    if old and not marker.exists():
        raise CliplabError(f"{out}: already holds shards ({old[0].name}, ...); a pattern over both sets would "
                           "mix them: write into an empty folder, or give another --prefix")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    fsync_dir(out)
    for path in old:  # an unfinished run's partial set: the marker says it is ours to replace
        path.unlink()
    written: list[Path] = []
    batch: list[tuple[Path, str]] = []

    def flush() -> None:
        if len(written) == MAX_SHARDS:
            raise CliplabError(f"{out}: more than {MAX_SHARDS:,} shards of {per_shard} samples; give a larger "
                               "--per-shard (shard names have five digits)")
        target = out / f"{prefix}{len(written):05d}.tar"
        exts = [member_key(path) for path, _ in batch]
        if None in exts:
            raise CliplabError(f"{batch[exts.index(None)][0]}: not a JPEG, PNG, WebP, BMP, GIF or TIFF image")
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            writer = wds.TarWriter(fh, encoder=False)
            for j, ((path, caption), ext) in enumerate(zip(batch, exts, strict=True)):
                key = f"{len(written):05d}{j:06d}"
                writer.write({"__key__": key, ext: path.read_bytes(), "txt": caption.encode("utf-8")})
            writer.close()
        written.append(target)
        batch.clear()

    for path, caption in samples:
        batch.append((Path(path), caption))
        if len(batch) == per_shard:
            flush()
    if batch:
        flush()
    marker.unlink()
    fsync_dir(out)
    return written
