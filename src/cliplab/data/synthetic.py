"""A synthetic world of coloured shapes: (image, caption) pairs that need no download.

Scenes hold one or two objects — a shape, a colour, a size, a position, and for two objects the relation
between them ("a red circle left of a blue star") — over varied backgrounds. A set of (colour, shape)
combinations is held out of training entirely, so zero-shot recognition of those combinations measures
whether the model composed what it learned. Every sample is a pure function of ``(seed, stream, index)``,
so streams split across workers and ranks without duplicates and resume exactly.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import IterableDataset, get_worker_info

from cliplab.data.batch import Batch
from cliplab.fileio import atomic_path, atomic_write

__all__ = ["Scene", "SyntheticDataset", "SyntheticWorld", "WorldConfig", "labelled_set", "retrieval_set",
           "write_classification_folder", "write_csv", "write_folder", "write_shards"]

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 70, 230), "yellow": (245, 225, 30),
    "purple": (140, 40, 180), "orange": (250, 130, 20), "white": (250, 250, 250), "black": (10, 10, 10),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring")
POSITIONS = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7), "centre": (0.5, 0.5)}
FULL = ("a {size} {colour} {shape}", "a photo of a {colour} {shape}", "a {colour} {shape}",
        "a {colour} {shape} on the {pos}", "a picture of a {size} {colour} {shape}", "one {colour} {shape}")
COLOUR_ONLY = ("something {colour}", "a {colour} object", "a {colour} thing")
SHAPE_ONLY = ("a {shape}", "a photo of a {shape}", "a {shape} shape")
EVAL_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "one {}.", "a small {}.", "a large {}.")


@dataclass(frozen=True)
class WorldConfig:
    image_size: int = 32
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    held_out: tuple[tuple[str, str], ...] | None = None  # None: the diagonal, one pair per colour and shape
    two_object_prob: float = 0.25
    full_caption_prob: float = 0.85
    shape_only_share: float = 0.5  # of the other one-object captions, the share naming only the shape
    seed: int = 0
    supersample: int = 4

    def held_out_pairs(self) -> tuple[tuple[str, str], ...]:
        if self.held_out is not None:
            return tuple(tuple(p) for p in self.held_out)
        n = min(len(self.colours), len(self.shapes))
        return tuple((self.colours[i], self.shapes[(i * 3) % len(self.shapes)]) for i in range(n))


@dataclass
class Scene:
    image: Image.Image
    caption: str
    colour: str
    shape: str
    second: tuple[str, str] | None = None
    extras: dict = field(default_factory=dict)


def _unit_ring(k: int, radii: list[float], phase: float) -> tuple[tuple[float, float], ...]:
    return tuple((radii[i % len(radii)] * math.cos(phase + 2 * math.pi * i / k),
                  radii[i % len(radii)] * math.sin(phase + 2 * math.pi * i / k)) for i in range(k))


def _unit_heart(n: int = 40) -> tuple[tuple[float, float], ...]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 16 * 1.1, -(y + 2) / 16 * 1.1))
    return tuple(pts)


_A, _B = 0.35, 1.05  # the cross's half arm width and half length, in radii
_UNIT_POLYGONS = {  # vertices in units of the radius, around the centre
    "square": _unit_ring(4, [1.2], math.pi / 4),
    "diamond": ((0, -1.15), (0.75, 0), (0, 1.15), (-0.75, 0)),
    "triangle": _unit_ring(3, [1.15], -math.pi / 2),
    "star": _unit_ring(10, [1.2, 0.5], -math.pi / 2),
    "cross": ((-_A, -_B), (_A, -_B), (_A, -_A), (_B, -_A), (_B, _A), (_A, _A), (_A, _B), (-_A, _B), (-_A, _A),
              (-_B, _A), (-_B, -_A), (-_A, -_A)),
    "heart": _unit_heart(),
}


def draw_sharp(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """The shape at (cx, cy) with radius ``r``, in white (255) on an "L" image, without anti-aliasing."""
    if shape in ("circle", "ring"):
        f = 1.1 if shape == "ring" else 1.0
        draw.ellipse([cx - f * r, cy - f * r, cx + f * r, cy + f * r], fill=255)
        if shape == "ring":
            draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=0)
    else:
        draw.polygon([(cx + u * r, cy + v * r) for u, v in _UNIT_POLYGONS[shape]], fill=255)


def _margin(r: float) -> int:
    return math.ceil(1.25 * r) + 1  # every shape stays within 1.2 radii of its centre


@functools.lru_cache(maxsize=1024)
def _stencil(shape: str, r: float, px: int, py: int, k: int) -> np.ndarray:
    """The coverage of a shape drawn sharp on a grid ``k`` times finer than the output, box-averaged down:
    (h, w) float32 in [0, 1]. Its centre lies ``_margin(r) + (px, py)`` fine pixels from the top-left corner
    (the phases ``px, py < k`` are where that corner falls inside an output pixel)."""
    m = _margin(r)
    cx, cy = m + px, m + py
    w, h = -(-(px + 2 * m + 1) // k) * k, -(-(py + 2 * m + 1) // k) * k  # whole output pixels
    mask = Image.new("L", (w, h), 0)
    draw_sharp(ImageDraw.Draw(mask), shape, cx, cy, r)
    if k > 1:
        mask = mask.resize((w // k, h // k), Image.BOX)
    cover = np.asarray(mask, dtype=np.float32) * (1 / 255)
    cover.flags.writeable = False
    return cover


def _coverage(shape: str, cx: float, cy: float, r: float, size: int, out: int) -> np.ndarray:
    """The share of each of ``out × out`` pixels that the shape covers, (out, out) float32 in [0, 1], for a
    shape drawn sharp on the ``size × size`` supersampled grid (its centre rounded to that grid)."""
    k, m = size // out, _margin(r)
    x0, y0 = round(cx) - m, round(cy) - m  # the sharp shape's top-left corner on the fine grid
    cover = _stencil(shape, r, x0 % k, y0 % k, k)
    qx, qy = x0 // k, y0 // k  # ... and the output pixel holding it
    canvas = np.zeros((out, out), np.float32)
    top, left = max(qy, 0), max(qx, 0)
    bottom, right = min(qy + cover.shape[0], out), min(qx + cover.shape[1], out)
    if bottom > top and right > left:
        canvas[top:bottom, left:right] = cover[top - qy:bottom - qy, left - qx:right - qx]
    return canvas


def _paint(arr: np.ndarray, shape: str, colour: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """``arr`` (n, n, 3) float32 with the shape laid over it, edges anti-aliased by their coverage."""
    cover = _coverage(shape, cx, cy, r, size, arr.shape[0])[:, :, None]  # (n, n, 1)
    arr += cover * (np.asarray(COLOURS[colour], np.float32) - arr)
    return arr


class SyntheticWorld:
    def __init__(self, cfg: WorldConfig | None = None) -> None:
        self.cfg = cfg or WorldConfig()
        held = set(self.cfg.held_out_pairs())
        self._all = [(c, s) for c in self.cfg.colours for s in self.cfg.shapes]
        self._seen = [p for p in self._all if p not in held]
        self._held = [p for p in self._all if p in held]

    def classnames(self) -> list[str]:
        """Every colour × shape combination, as ``"red circle"``, in a fixed order."""
        return [f"{c} {s}" for c, s in self._all]

    def class_index(self, colour: str, shape: str) -> int:
        return self._all.index((colour, shape))

    def held_out_pairs(self) -> list[tuple[str, str]]:
        return list(self._held)

    def seen_pairs(self) -> list[tuple[str, str]]:
        return list(self._seen)

    def _pairs(self, split: str) -> list[tuple[str, str]]:
        return {"train": self._seen, "heldout": self._held, "all": self._all}[split]

    def _background(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A (size, size, 3) float32 background at the output resolution, desaturated (60 % colour, 40 %
        grey) so that objects keep the only strong colours."""
        base = rng.integers(60, 190, 3).astype(np.float32)
        grey = 0.4 * base.mean()
        kind = rng.integers(3)
        arr = np.empty((size, size, 3), np.float32)
        if kind == 0:
            arr[:] = 0.6 * base + grey
        elif kind == 1:
            other = rng.integers(60, 190, 3).astype(np.float32)
            t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]  # (size, 1, 1)
            arr[:] = 0.6 * (base * (1 - t) + other * t) + grey  # a vertical gradient ...
            if rng.random() >= 0.5:
                arr = arr.transpose(1, 0, 2).copy()  # ... or a horizontal one
        else:
            noise = rng.standard_normal((size, size, 3), dtype=np.float32)
            np.clip(0.6 * (base + 9 * noise) + grey, 0, 255, out=arr)
        return arr

    def sample(self, rng: np.random.Generator, split: str = "train", two_objects: bool | None = None,
               pair: tuple[str, str] | None = None) -> Scene:
        """One scene; ``pair`` fixes the (colour, shape) of the main object."""
        cfg = self.cfg
        pairs = self._pairs(split)
        colour, shape = pair if pair is not None else pairs[rng.integers(len(pairs))]
        n, ss = cfg.image_size, cfg.image_size * cfg.supersample  # output and drawing resolutions
        arr = self._background(rng, n)  # (n, n, 3)
        two = (rng.random() < cfg.two_object_prob) if two_objects is None else two_objects
        size = "large" if rng.random() < 0.5 else "small"
        radius = (0.34 if size == "large" else 0.26) * ss
        second = None
        if two:
            # the first object goes left/right or top/bottom of the second; both smaller
            axis = "h" if rng.random() < 0.5 else "v"
            first_pos, second_pos = ("left", "right") if axis == "h" else ("top", "bottom")
            if rng.random() < 0.5:
                first_pos, second_pos = second_pos, first_pos
            pool = self._seen if split == "train" else self._all
            second = pool[rng.integers(len(pool))]
            r = 0.21 * ss
            for (c, s), pos in (((colour, shape), first_pos), (second, second_pos)):
                px, py = POSITIONS[pos]
                arr = _paint(arr, s, c, px * ss, py * ss, r, ss)
            relation = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}[first_pos]
            caption = f"a {colour} {shape} {relation} a {second[0]} {second[1]}"
            pos = first_pos
        else:
            pos = ("centre", "left", "right", "top", "bottom")[rng.integers(5)]
            px, py = POSITIONS[pos]
            jitter = (rng.random(2) - 0.5) * 0.12 * ss
            px, py = px * ss + jitter[0], py * ss + jitter[1]
            if pos != "centre":  # keep the object inside the frame
                px, py = (0.5 * ss + (px - 0.5 * ss) * 0.55), (0.5 * ss + (py - 0.5 * ss) * 0.55)
            arr = _paint(arr, shape, colour, px, py, radius, ss)
            u = rng.random()
            if u < cfg.full_caption_prob:
                template = FULL[rng.integers(len(FULL))]
            elif u < cfg.full_caption_prob + (1 - cfg.full_caption_prob) * (1 - cfg.shape_only_share):
                template = COLOUR_ONLY[rng.integers(len(COLOUR_ONLY))]
            else:
                template = SHAPE_ONLY[rng.integers(len(SHAPE_ONLY))]
            caption = template.format(size=size, colour=colour, shape=shape, pos=pos)
        image = Image.fromarray(np.rint(arr).astype(np.uint8))
        return Scene(image, caption, colour, shape, second, {"size": size, "position": pos})

    def rng(self, stream: int, index: int) -> np.random.Generator:
        """The generator of sample ``index`` of ``stream``: a pure function of (seed, stream, index)."""
        return np.random.default_rng(np.random.SeedSequence([self.cfg.seed, stream, index]))


class SyntheticDataset(IterableDataset):
    """Streams ready batches of ``(image tensor, token ids)``; batch ``b`` of rank ``r`` is a pure function of
    ``(seed, r, b)``, so the order is the same for any number of DataLoader workers (worker ``w`` makes
    batches ``w, w + W, ...``) and resuming at ``start_batch`` reproduces the exact sequence.

    Use with ``DataLoader(dataset, batch_size=None, num_workers=W)``; ``num_batches=None`` streams forever.
    """

    def __init__(self, world: SyntheticWorld, transform, tokenizer, batch_size: int, split: str = "train",
                 seed: int = 0, rank: int = 0, start_batch: int = 0, num_batches: int | None = None) -> None:
        self.world, self.transform, self.tokenizer = world, transform, tokenizer
        self.batch_size, self.split, self.seed, self.rank = batch_size, split, seed, rank
        self.start_batch, self.num_batches = start_batch, num_batches

    def batch(self, b: int) -> Batch:
        stream = self.seed * 1_000_003 + self.rank
        scenes = [self.world.sample(self.world.rng(stream, b * self.batch_size + i), self.split)
                  for i in range(self.batch_size)]
        pil = [s.image for s in scenes]
        stack = getattr(self.transform, "stack", None) or (lambda imgs, **kw: torch.stack(
            [self.transform(img, **kw) for img in imgs]))  # any per-image callable
        if getattr(self.transform, "random", False):  # augmentation drawn from (seed, rank, batch): resumable
            images = stack(pil, generator=torch.Generator().manual_seed(stream * 1_000_003 + b))  # (B, 3, S, S)
        else:
            images = stack(pil)  # (B, 3, S, S)
        texts = self.tokenizer([s.caption for s in scenes], truncate=True)  # (B, L)
        return Batch(images, texts)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.start_batch + worker
        while self.num_batches is None or b < self.start_batch + self.num_batches:
            yield self.batch(b)
            b += n_workers


def labelled_set(world: SyntheticWorld, n_per_class: int, split: str = "all", seed: int = 1) -> list:
    """Single-object images with their class index: ``[(PIL image, class), ...]``."""
    out = []
    for colour, shape in world._pairs(split):
        k = world.class_index(colour, shape)
        for i in range(n_per_class):
            scene = world.sample(world.rng(10_000 + seed, k * 100_000 + i), split, two_objects=False,
                                 pair=(colour, shape))
            out.append((scene.image, k))
    return out


def retrieval_set(world: SyntheticWorld, n: int, seed: int = 2, split: str = "all") -> list:
    """Fresh scenes with full captions: ``[(PIL image, caption), ...]``."""
    cfg = WorldConfig(**{**world.cfg.__dict__, "full_caption_prob": 1.0})
    full = SyntheticWorld(cfg)
    return [(s.image, s.caption) for s in (full.sample(world.rng(20_000 + seed, i), split) for i in range(n))]


def _scenes(world: SyntheticWorld, n: int, seed: int) -> Iterator[Scene]:
    for i in range(n):
        yield world.sample(world.rng(30_000 + seed, i), "train")


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_folder(world: SyntheticWorld, n: int, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(_scenes(world, n, seed)):
        _save_png(scene.image, out / f"{i:06d}.png")
        with atomic_write(out / f"{i:06d}.txt", encoding="utf-8") as fh:
            fh.write(scene.caption)
    return out


def write_csv(world: SyntheticWorld, n: int, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """``out_dir/images/*.png`` + ``out_dir/train.csv`` (columns filepath,title; relative paths)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, scene in enumerate(_scenes(world, n, seed)):
        _save_png(scene.image, out / "images" / f"{i:06d}.png")
        rows.append((f"images/{i:06d}.png", scene.caption))
    with atomic_write(out / "train.csv", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return out / "train.csv"


def write_shards(world: SyntheticWorld, n: int, out_dir: str | os.PathLike[str], per_shard: int = 1000,
                 seed: int = 0) -> list[Path]:
    from cliplab.data.shards import write_shards as _write

    folder = write_folder(world, n, Path(out_dir) / "_images", seed)
    images = sorted(folder.glob("*.png"))
    return _write(((p, p.with_suffix(".txt").read_text()) for p in images), out_dir, per_shard)


def write_classification_folder(world: SyntheticWorld, n_per_class: int, out_dir: str | os.PathLike[str],
                                split: str = "all", seed: int = 1) -> Path:
    """One subfolder per class name, for ``cliplab eval zeroshot``."""
    out = Path(out_dir)
    names = world.classnames()
    for i, (image, label) in enumerate(labelled_set(world, n_per_class, split, seed)):
        folder = out / names[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        _save_png(image, folder / f"{i:06d}.png")
    return out
