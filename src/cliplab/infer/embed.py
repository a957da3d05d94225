"""Embedding images and texts with a model, one batch at a time or a whole collection into a store.

A collection is an image folder, a CSV, or WebDataset tar shards (``shards/{0000..0009}.tar``); an image
inside a shard is named ``SHARD.tar#MEMBER``. A collection run is resumable: items already in the store
(by path) are skipped, parts are written atomically, and unreadable images — like names or captions that
are not UTF-8, and second names (symlinks) for a file of the folder — are skipped, listed and counted,
never fatal. Under ``torchrun`` each rank embeds its own share (``items[rank::world_size]``)
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
from collections.abc import Callable, Sequence
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
                raw = fh.read(size).decode("utf-8", errors="surrogateescape")  # not UTF-8: _item skips it
                if name.endswith(".json"):
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        return None
                    found = next((obj[k] for k in TEXT_FIELDS if isinstance(obj, dict) and k in obj), None)
                    return found if isinstance(found, str) else None
                return raw.strip()

            for name in members:
                stem, _, ext = name.rpartition(".")
                if ext.lower() not in IMAGE_KEYS:
                    continue
                caption = next((text(f"{stem}.{e}") for e in ("txt", "json") if f"{stem}.{e}" in members), None)
                path = tar[: -len(".tar")] + _IN_TAR + name
                items.append(_item(path, caption, _printable(path)))
    return items


def _printable(text: str) -> str:
    """``text`` safe to print and store: bytes that were not UTF-8 (kept as lone surrogates) as ``\\xe9``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that stand for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _item(path: str, caption: str | None, source: str) -> dict[str, Any]:
    """An item record; one whose name or caption is not UTF-8 (the store holds UTF-8 text only, and a file
    name read from disk or a CSV row keeps undecodable bytes as lone surrogates) is marked to be skipped."""
    item: dict[str, Any] = {"path": path, "caption": caption}
    for what, value in (("file name", path), ("caption", caption)):
        if value is not None and _printable(value) != value:
            item.update(skip=f"{what} is not valid UTF-8", source=source)
            break
    return item


def _not_stored(items: list[dict[str, Any]], store: Any) -> tuple[list[dict[str, Any]], int]:
    """The items without a stored row yet, and how many captioned items matched a row of another caption or none.

    A stored row is an image's vector: the image's path is what identifies it. Rows are counted per path,
    because a CSV may give one image several captions (one row each), or even repeat a row, and each row is
    one stored vector; so an item is matched to a stored row of its path that no other item took. Rows of the
    same caption are matched first, then rows of another caption or none: re-running a CSV with
    ``--csv-caption-key`` added, or a caption's typo mended, finds the image stored and does not store it a
    second time (a search would find it twice). The row keeps its old caption: a named part is never
    rewritten, which is what keeps a store whole through kills and readers; the count says so, and embedding
    into a new store brings the new captions. A CSV that now gives an image more rows than are stored embeds
    only the rows beyond them."""
    table = store.metadata()
    paths = table.column("path").to_pylist()
    captions = table.column("caption").to_pylist() if "caption" in table.column_names else [None] * len(paths)
    by_caption, by_path = Counter(zip(paths, captions, strict=True)), Counter(paths)

    def take(item: dict[str, Any], path: str, same_caption: bool) -> bool:
        """Match ``item`` to a stored row of ``path`` (of its caption, or of any), if one is left."""
        if by_path[path] <= 0 or (same_caption and by_caption[path, item["caption"]] <= 0):
            return False
        by_path[path] -= 1
        if same_caption:
            by_caption[path, item["caption"]] -= 1
        return True

    # Stores made before symlinks kept their names hold resolved paths. Those matches come after the ones by
    # the item's own name, once every item had its own: else a link listed before its target would take the
    # target's row. Every match by caption comes before any other, so that a caption finds its own row.
    waiting, other_caption = items, 0
    for same_caption in (True, False):
        for resolve in (False, True):
            found = [take(item, os.path.realpath(item["path"]) if resolve else item["path"], same_caption)
                     for item in waiting]
            if not same_caption:
                other_caption += sum(1 for item, f in zip(waiting, found, strict=True) if f and item["caption"])
            waiting = [item for item, f in zip(waiting, found, strict=True) if not f]
    return waiting, other_caption


def _folder_items(folder: Path) -> list[dict[str, Any]]:
    """A folder's images by absolute path as found (a symlink keeps its own name). A second name for a file
    already listed (a symlink to it) is marked to be skipped, so that searches find the file once; the file's
    own name wins over its links', whatever their order."""
    from cliplab.data.folder import list_images

    paths = [os.path.abspath(p) for p in list_images(folder)]
    real = {p: os.path.realpath(p) for p in paths}
    first: dict[str, str] = {}
    for p in sorted(paths, key=lambda p: p != real[p]):  # stable: files themselves, then links, in order
        first.setdefault(real[p], p)
    items = []
    for p in paths:
        item = _item(p, None, _printable(p))
        if first[real[p]] != p and "skip" not in item:
            item.update(skip=f"same file as {_printable(first[real[p]])}", source=_printable(p))
        items.append(item)
    return items


def _csv_items(src: Path, img_key: str, caption_key: str | None, sep: str) -> list[dict[str, Any]]:
    """A CSV's rows as items, by absolute path (relative ones are relative to the CSV's folder). Each names
    its row (``file.csv:LINE``) as its source, so that an image it cannot give is reported by the row."""
    from cliplab.data.csv import read_rows

    rows, lines = read_rows(src, [img_key] + ([caption_key] if caption_key else []), sep)
    items = []
    for row, line in zip(rows, lines, strict=True):
        source = f"{src}:{line}"
        item = _item(os.path.abspath(src.parent / row[0]), row[1] if caption_key else None, source)
        if not row[0].strip():  # else the CSV's own folder, reported as an unreadable image
            item["skip"] = f"empty {img_key} cell"
        items.append({**item, "source": source})
    return items


def list_items(source: str | os.PathLike[str], img_key: str = "filepath", caption_key: str | None = None,
               sep: str = ",") -> list[dict[str, Any]]:
    """The images of a folder, CSV or tar shards as ``{"path", "caption"}`` records, in a stable order.

    A record that cannot be embedded also holds ``"skip"`` (why) and ``"source"`` (the file or CSV row): a
    name or caption that is not UTF-8, a CSV row without a path, or a second name for a file of the folder.
    A CSV's records all hold ``"source"``, the row an unreadable image is then reported by. :func:`embed_collection`
    lists and counts those with the unreadable images.
    """
    from cliplab.data.folder import IMAGE_EXTENSIONS

    text, src = str(source), Path(source)
    if (text.endswith(".tar") or "{" in text or "::" in text) and not (src.is_dir() or src.suffix == ".csv"):
        items = _shard_items(text)
    elif src.is_dir():
        items = _folder_items(src)
    elif not src.exists():
        raise CliplabError(f"{src}: no such file or folder")
    elif src.suffix.lower() in IMAGE_EXTENSIONS:
        raise CliplabError(f"{src}: a single image; give its folder, or a CSV that lists it")
    else:
        items = _csv_items(src, img_key, caption_key, sep)
    if not items:
        looked = f" (looked for {', '.join(IMAGE_EXTENSIONS)})" if src.is_dir() else ""
        raise CliplabError(f"{text}: no images found{looked}")
    return items


class _ImageItems(Dataset):
    def __init__(self, items: list[dict[str, Any]], preprocess: Any) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int] | BadSample:
        path = self.items[i]["path"]
        where = f"{self.items[i]['source']} ({path})" if "source" in self.items[i] else path  # a CSV row
        if os.path.isdir(path):  # a CSV row naming a folder (".", say)
            return BadSample(where, "a folder, not an image")
        try:
            image = read_item_image(path)
            return self.preprocess(image), i, image.width, image.height
        except FileNotFoundError:
            return BadSample(where, "file not found")
        except (CliplabError, OSError, ValueError, SyntaxError) as err:  # Pillow's parsers raise SyntaxError too
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return BadSample(where, reason.removeprefix(f"{path}: "))  # the path is named once, not twice


def _collate(batch: list) -> tuple[torch.Tensor | None, list[tuple[int, int, int]], list[BadSample]]:
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [b for b in batch if isinstance(b, BadSample)]
    pixels = torch.stack([g[0] for g in good]) if good else None  # (B, 3, S, S)
    return pixels, [(g[1], g[2], g[3]) for g in good], bad


@dataclass
class EmbedReport:
    embedded: int = 0
    already_done: int = 0
    other_caption: int = 0  # of already_done: stored under another caption (or none), kept as it is
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
    snapshot_taken: Callable[[], None] | None = None,
) -> EmbedReport:
    """Embed this rank's share of the not-yet-stored ``items`` into ``store`` (an :class:`EmbeddingStore`).

    What is not yet stored is decided on the whole list, then shared out by rank, so every rank must see the
    same store: under several processes pass ``snapshot_taken``, a barrier every rank passes after reading
    the store and before any writes."""
    from tqdm import tqdm

    report = EmbedReport()
    report.skipped.extend(BadSample(item["source"], item["skip"]) for item in items[rank::world_size]
                          if "skip" in item)
    usable = [item for item in items if "skip" not in item]
    waiting, other_caption = _not_stored(usable, store)  # one snapshot of the store, the same on every rank
    if snapshot_taken is not None:
        snapshot_taken()
    todo = waiting[rank::world_size]
    if rank == 0:  # counted once
        report.already_done, report.other_caption = len(usable) - len(waiting), other_caption
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
