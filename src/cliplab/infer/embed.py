"""Embedding images and texts with a model, one batch at a time or a whole collection into a store.

A collection is an image folder, a CSV, or WebDataset tar shards (``shards/{0000..0009}.tar``); an image
inside a shard is named ``SHARD.tar#MEMBER``. A collection run is resumable: items already in the store
(by path) are skipped, parts are written atomically, and unreadable images are skipped, listed and
counted — never fatal. Under ``torchrun`` each rank embeds its own share (``items[rank::world_size]``)
into rank-named parts of the same store.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cliplab.data.batch import BadSample
from cliplab.errors import CliplabError
from cliplab.model.text_transformer import batches_by_length
from cliplab.precision import autocast

__all__ = ["EmbedReport", "embed_collection", "embed_images", "embed_texts", "list_items",
           "read_item_image"]

_IN_TAR = ".tar#"  # SHARD.tar#MEMBER names an image inside a shard


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_texts(texts: Sequence[str], model: Any, tokenizer: Any = None, batch_size: int = 256,
                precision: str = "fp32", normalize: bool = True) -> np.ndarray:
    """(N, D) float32 text embeddings (L2-normalised by default); ``tokenizer`` defaults to the model's own."""
    if tokenizer is None:
        from cliplab.api import model_io

        tokenizer = model_io(model)[1]
    device = _device(model)
    out = torch.empty(len(texts), model.cfg.embed_dim)  # (N, D)
    window = 64 * batch_size  # texts tokenised at a time, then embedded in batches of like lengths
    for start in range(0, len(texts), window):
        tokens = tokenizer(list(texts[start : start + window]), truncate=True)  # (W, L)
        for rows in batches_by_length(tokens, batch_size):
            with autocast(device, precision):
                out[start + rows] = model.encode_text(tokens[rows].to(device), normalize=normalize).float().cpu()
    return out.numpy()


@torch.no_grad()
def embed_images(images: Sequence[Any], model: Any, preprocess: Any = None, batch_size: int = 64,
                 precision: str = "fp32", normalize: bool = True) -> np.ndarray:
    """(N, D) float32 image embeddings for PIL images, file paths or preprocessed tensors (3, S, S).

    ``preprocess`` defaults to that of the checkpoint the model was loaded from. Unreadable files raise
    :class:`cliplab.transforms.ImageError` naming the file; use :func:`embed_collection` to skip and count
    them instead.
    """
    from cliplab.transforms import as_pixels

    if preprocess is None:
        from cliplab.api import model_io

        preprocess = model_io(model)[0]
    device = _device(model)
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        pixels = torch.stack([as_pixels(im, preprocess, f"embed_images: image {i + j}")
                              for j, im in enumerate(chunk)]).to(device)  # (B, 3, S, S)
        with autocast(device, precision):
            out.append(model.encode_image(pixels, normalize=normalize).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.embed_dim), np.float32)


@functools.lru_cache(maxsize=64)
def _tar_members(tar: str, mtime: float) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) for the regular files of one tar (cached per file version)."""
    try:
        with tarfile.open(tar) as tf:
            return {m.name: (m.offset_data, m.size) for m in tf.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as err:
        raise CliplabError(f"{tar}: unreadable shard ({' '.join(str(err).split())})") from None


def read_item_image(path: str, max_pixels: int | None = None) -> Any:
    """The image an item names: a file, or ``SHARD.tar#MEMBER`` inside a shard (checked, never extracted)."""
    from cliplab.transforms import MAX_PIXELS, load_image

    limit = max_pixels or MAX_PIXELS
    if _IN_TAR in path and not os.path.exists(path):
        tar, member = path.split(_IN_TAR, 1)
        tar += ".tar"
        if not os.path.isfile(tar):
            raise FileNotFoundError(tar)
        entry = _tar_members(tar, os.path.getmtime(tar)).get(member)
        if entry is None:
            raise FileNotFoundError(path)
        with open(tar, "rb") as fh:
            fh.seek(entry[0])
            data = fh.read(entry[1])
        return load_image(io.BytesIO(data), max_pixels=limit)
    return load_image(path, max_pixels=limit)


def _shard_items(pattern: str) -> list[dict[str, Any]]:
    """One record per image in the shards, keyed ``SHARD.tar#MEMBER``, with the sample's caption if any."""
    from cliplab.data.shards import IMAGE_KEYS, TEXT_FIELDS, expand_urls

    items = []
    for url in expand_urls(pattern):
        if "://" in url or url.startswith("pipe:") or not url.endswith(".tar"):
            raise CliplabError(f"{url}: embed reads local .tar shards only")
        tar = str(Path(url).resolve())
        members = _tar_members(tar, os.path.getmtime(tar))
        with open(tar, "rb") as fh:
            def text(name: str, fh=fh, members=members) -> str | None:
                offset, size = members[name]
                fh.seek(offset)
                raw = fh.read(size).decode("utf-8", errors="replace")
                if name.endswith(".json"):
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        return None
                    return next((obj[k] for k in TEXT_FIELDS if isinstance(obj, dict) and k in obj), None)
                return raw.strip()

            for name in members:
                stem, _, ext = name.rpartition(".")
                if ext.lower() not in IMAGE_KEYS:
                    continue
                caption = next((text(f"{stem}.{e}") for e in ("txt", "json") if f"{stem}.{e}" in members), None)
                items.append({"path": tar[: -len(".tar")] + _IN_TAR + name, "caption": caption})
    return items


def _not_stored(items: list[dict[str, Any]], store: Any) -> list[dict[str, Any]]:
    """The items without a stored row yet. An item is its (path, caption) pair, counted: a CSV may give one
    image several captions (one row each), or even repeat a row, and each row is one stored vector."""
    table = store.metadata()
    captions = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * len(table)
    stored = Counter(zip(table.column("path").to_pylist(), captions, strict=True))
    todo = []
    for item in items:
        key = (item["path"], item["caption"])
        if stored[key] > 0:
            stored[key] -= 1
        else:
            todo.append(item)
    return todo


def list_items(source: str | os.PathLike[str], img_key: str = "filepath", caption_key: str | None = None,
               sep: str = ",") -> list[dict[str, Any]]:
    """The images of a folder, CSV or tar shards as ``{"path", "caption"}`` records, in a stable order."""
    from cliplab.data.csv import read_rows
    from cliplab.data.folder import list_images

    text, src = str(source), Path(source)
    if (text.endswith(".tar") or "{" in text or "::" in text) and not (src.is_dir() or src.suffix == ".csv"):
        return _shard_items(text)
    if src.is_dir():
        return [{"path": str(p.resolve()), "caption": None} for p in list_images(src)]
    if not src.exists():
        raise CliplabError(f"{src}: no such file or folder")
    columns = [img_key] + ([caption_key] if caption_key else [])
    rows, _ = read_rows(src, columns, sep)
    return [{"path": str((src.parent / r[0]).resolve()), "caption": r[1] if caption_key else None} for r in rows]


class _ImageItems(Dataset):
    def __init__(self, items: list[dict[str, Any]], preprocess: Any) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int] | BadSample:
        path = self.items[i]["path"]
        try:
            image = read_item_image(path)
            return self.preprocess(image), i, image.width, image.height
        except FileNotFoundError:
            return BadSample(path, "file not found")
        except (CliplabError, OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return BadSample(path, reason.removeprefix(f"{path}: "))  # the source is named once, not twice


def _collate(batch: list) -> tuple[torch.Tensor | None, list[tuple[int, int, int]], list[BadSample]]:
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)]
    pixels = torch.stack([g[0] for g in good]) if good else None  # (B, 3, S, S)
    return pixels, [(g[1], g[2], g[3]) for g in good], bad


@dataclass
class EmbedReport:
    embedded: int = 0
    already_done: int = 0
    skipped: list[BadSample] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def embed_collection(
    model: Any,
    preprocess: Any,
    items: list[dict[str, Any]],
    store: Any,
    *,
    batch_size: int = 64,
    workers: int = 0,
    precision: str = "fp32",
    part_size: int = 4096,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> EmbedReport:
    """Embed the not-yet-stored ``items`` of this rank into ``store`` (an :class:`EmbeddingStore`)."""
    from tqdm import tqdm

    report = EmbedReport()
    mine = items[rank::world_size]
    todo = _not_stored(mine, store)
    report.already_done = len(mine) - len(todo)
    loader = DataLoader(_ImageItems(todo, preprocess), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    device = _device(model)
    vectors: list[np.ndarray] = []
    meta: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", disable=not progress, desc="embed")

    def flush(final: bool = False) -> None:
        """Write parts of exactly ``part_size`` vectors (the last one of a run may be smaller)."""
        while meta and (len(meta) >= part_size or final):
            done = np.concatenate(vectors)  # (n, D)
            n = min(part_size, len(meta))
            store.append_part(done[:n], meta[:n], rank=rank)
            vectors[:] = [done[n:]] if len(done) > n else []
            del meta[:n]

    with torch.no_grad():
        for pixels, index, bad in loader:
            report.skipped.extend(bad)
            if pixels is not None:
                with autocast(device, precision):
                    emb = model.encode_image(pixels.to(device), normalize=True).float().cpu().numpy()
                vectors.append(emb)
                for i, w, h in index:
                    meta.append({"path": todo[i]["path"], "width": w, "height": h, "caption": todo[i]["caption"]})
                report.embedded += len(index)
            bar.update(len(index) + len(bad))
            flush()
    flush(final=True)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report
