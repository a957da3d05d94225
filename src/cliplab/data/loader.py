"""Training data loaders for every format, resumable at a given step.

Each loader yields :class:`cliplab.data.batch.Batch` objects of ``batch_size`` samples (minus skipped bad
samples). ``start_step`` skips what an interrupted run already consumed: exactly for the synthetic world
and for map-style datasets (CSV, folder: a seeded permutation per epoch); WebDataset shards replay the
same seeded order and skip (without decoding) the batches of the saved ``position``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cliplab.data.batch import collate
from cliplab.errors import CliplabError

__all__ = ["EpochBatchSampler", "TrainData", "build_train_data"]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(index, epoch)``: a seeded permutation per epoch, this rank's share, from
    ``start`` on. The epoch goes with each index so that the dataset seeds its augmentation from both."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.per_epoch = max(1, (n // world_size) // batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        while True:
            epoch, k = divmod(b, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            mine = perm[self.rank :: self.world_size]
            yield [(i, epoch) for i in mine[k * self.batch_size : (k + 1) * self.batch_size].tolist()]
            b += 1


@dataclass
class TrainData:
    batches: Iterator[Any]
    steps_per_epoch: int | None  # None for endless streams (synthetic, resampled shards)
    position: Callable[[], dict[str, int]] | None = None  # where a stream stands, saved for an exact resume
    left_out: int = 0  # pairs of a map-style dataset that fill no whole batch: a different few each epoch

    def close(self) -> None:
        """Stop the loader's worker processes now, not whenever the garbage collector reaches them (which
        could stall a later run in the same process, or leave idle workers behind)."""
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()


def build_train_data(cfg: Any, transform: Any, tokenizer: Any, batch_size: int, *, rank: int = 0,
                     world_size: int = 1, seed: int = 0, start_step: int = 0, image_size: int = 32,
                     position: dict[str, int] | None = None, pin_memory: bool = False) -> TrainData:
    """``cfg`` is a :class:`cliplab.train.config.DataConfig`; one yielded batch per optimisation step.

    ``position`` is what :attr:`TrainData.position` returned when the resumed checkpoint was written
    (shards: epoch and batches consumed in it); without it a shard stream restarts reseeded.
    """
    fmt = cfg.format
    workers = cfg.workers
    if fmt == "synthetic":
        from cliplab.data.synthetic import SyntheticDataset, SyntheticWorld, WorldConfig

        world = SyntheticWorld(WorldConfig(image_size=image_size, seed=cfg.synthetic_seed,
                                           two_object_prob=cfg.synthetic_two_object_prob,
                                           full_caption_prob=cfg.synthetic_full_caption_prob,
                                           shape_only_share=cfg.synthetic_shape_only_share))
        ds = SyntheticDataset(world, transform, tokenizer, batch_size, seed=seed, rank=rank, start_batch=start_step)
        loader = DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                            persistent_workers=False, pin_memory=pin_memory)
        return TrainData(_each(loader), None)
    if not cfg.train_data:
        raise CliplabError(f"data.train_data is required for data.format={fmt!r} (--train-data)")
    if fmt == "wds":
        from cliplab.data.shards import ShardDataset

        exact = position is not None or start_step == 0
        ds = ShardDataset(cfg.train_data, transform, tokenizer, shuffle_buffer=cfg.shuffle_buffer,
                          resampled=cfg.resampled, seed=seed if exact else seed + start_step, rank=rank,
                          world_size=world_size)
        ds.batch_size = batch_size
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate, pin_memory=pin_memory)
        stream = _Epochs(loader, ds, **(position or {}))
        return TrainData(iter(stream), None, stream.position)
    dataset: Dataset
    if fmt == "csv":
        from cliplab.data.csv import CsvDataset

        dataset = CsvDataset(cfg.train_data, transform, tokenizer, cfg.csv_img_key, cfg.csv_caption_key,
                             cfg.csv_separator)
    elif fmt == "folder":
        from cliplab.data.folder import FolderDataset

        dataset = FolderDataset(cfg.train_data, transform, tokenizer)
    else:
        raise CliplabError(f"unknown data.format {fmt!r} (synthetic, csv, folder or wds)")
    if len(dataset) < batch_size * world_size:
        raise CliplabError(f"{cfg.train_data}: {len(dataset)} samples, fewer than one global batch "
                           f"({batch_size} x {world_size} processes)")
    dataset.seed = seed
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size, start_step)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        pin_memory=pin_memory)
    return TrainData(_each(loader), sampler.per_epoch,
                     left_out=len(dataset) - sampler.per_epoch * batch_size * world_size)


def _each(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, as a generator: closing it drops the loader's iterator, which ends its workers."""
    yield from loader


class _Epochs:
    """A shard loader run epoch after epoch, knowing how far it is: ``{"epoch", "batch", "items",
    "next_worker"}``, where ``items`` counts the samples each DataLoader worker has yielded this epoch and
    ``next_worker`` is whose turn it is. Workers' shares of an epoch differ (a short last shard, shards that
    do not split evenly), so a resumed worker skips its own count, and the turn order goes on where it was."""

    def __init__(self, loader: DataLoader, ds: Any, epoch: int = 0, batch: int = 0,
                 items: dict[str, int] | None = None, next_worker: int | None = None) -> None:
        self.loader, self.ds, self.epoch, self.batch = loader, ds, epoch, batch
        self.workers = max(1, loader.num_workers)
        if items is None and batch:  # saved before per-worker counts: full batches taken from workers in turn
            n = self.workers
            items = {str(w): max(0, (batch - w + n - 1) // n) * ds.batch_size for w in range(n)}
        self.items = dict(items or {})
        self.next_worker = batch % self.workers if next_worker is None else next_worker

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "items": dict(self.items), "next_worker": self.next_worker}

    def __iter__(self) -> Iterator[Any]:
        while True:
            first = self.next_worker
            self.ds.set_epoch(self.epoch, skip_items=self.items, first_worker=first)
            empty = True
            for batch in self.loader:
                empty = False
                self.batch += 1
                role = (batch.worker + first) % self.workers  # the worker whose share this batch is
                self.items[str(role)] = self.items.get(str(role), 0) + len(batch) + len(batch.bad)
                self.next_worker = (role + 1) % self.workers
                yield batch
            if empty and self.batch == 0:
                raise CliplabError("the shards yielded no samples")
            self.epoch, self.batch, self.items, self.next_worker = self.epoch + 1, 0, {}, 0
