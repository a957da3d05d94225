"""An embedding store: a folder of vector parts (``.npy``) and their metadata (Parquet), with a manifest.

``manifest.json`` lists the complete parts in order; a part's files are written atomically *before* the
manifest names it, so a kill at any moment leaves a consistent store (a part file the manifest does not
name is ignored, and overwritten by a resumed run). Under ``torchrun`` each rank writes its own parts
(``part-r{rank}-{n}``) and its own manifest (``manifest-r{rank}.json``); opening the store merges them.
Ids are positions in that merged order. NumPy and pyarrow read the files directly.

A manifest is rewritten whole and names its next part by its own length, so it must have one writer at a
time: a writer holds :func:`lock_store` on its rank's manifest while it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from cliplab.errors import CliplabError
from cliplab.fileio import atomic_path, lock_folder, write_json

__all__ = ["EmbeddingStore", "lock_store", "model_id", "same_model", "weights_fingerprint"]

COLUMNS = ("path", "width", "height", "caption")
_TYPES = ("string", "int64", "int64", "string")  # of COLUMNS: fixed, so parts without captions or sizes agree


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([(c, getattr(pa, t)()) for c, t in zip(COLUMNS, _TYPES, strict=True)])


def _manifest_name(rank: int) -> str:
    return "manifest.json" if rank == 0 else f"manifest-r{rank}.json"


def _lock_name(rank: int) -> str:
    return ".lock" if rank == 0 else f".lock-r{rank}"


def lock_store(path: str | os.PathLike[str], rank: int = 0) -> IO[str] | None:
    """Lock the store at ``path`` (created if needed) for writing ``rank``'s manifest; keep the returned file
    open while writing. ``None`` where ``flock`` does not exist.

    Two writers of one manifest would each name their next part from their own copy of it and rewrite it
    whole, so one's vectors would silently vanish: the second is refused. It is the training run's lock
    (:func:`cliplab.fileio.lock_folder`: ``flock`` on a file holding the writer's pid, dropped by the kernel
    however the process ends), with one lock per rank manifest, so the ranks of one torchrun run never lock
    each other out. Every run has a rank 0, so two runs into one store always meet at ``.lock``.
    """
    return lock_folder(path, _lock_name(rank), "another process{pid} is writing this store; wait for it to end "
                                               "or stop it, then run again")


def _check_parts(manifest: dict[str, Any]) -> None:
    """A hand-edited manifest's parts must each name a file and count its vectors (raises TypeError)."""
    parts = manifest["parts"]
    if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("count"), int)
            for p in parts):
        raise TypeError('"parts" must be a list of {"name": str, "count": int}')


def model_id(checkpoint: str | os.PathLike[str]) -> str:
    """How a store names its model: an absolute path for a local checkpoint (so the store can be queried
    from any folder), a training run folder's *current* latest checkpoint (which the run's later saves do not
    change), else the name as given (``ViT-B-32``)."""
    from cliplab.checkpoint import is_native
    from cliplab.train.state import resolve_run_dir

    path = Path(checkpoint)
    if not path.exists():
        return str(checkpoint)
    if path.is_dir() and not is_native(path):
        path = resolve_run_dir(path) or path
    return str(path.resolve())


def weights_fingerprint(model: Any) -> str:
    """A short hash of a model's parameters (names, shapes and 16 values spread over each): two models of the
    same size but other weights get other fingerprints, at a cost of microseconds per tensor."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        picks = flat[torch.linspace(0, max(flat.numel() - 1, 0), 16).long()] if flat.numel() else flat
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(picks.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


class EmbeddingStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifests = sorted(self.path.glob("manifest*.json"))
        if not manifests:
            raise CliplabError(f"{self.path}: not an embedding store (no manifest.json)")
        self._manifests: dict[int, dict[str, Any]] = {}
        for m in manifests:
            try:
                data = json.loads(m.read_text())
                rank = int(data.get("rank", 0))
                int(data["dim"]), str(data["dtype"])
                _check_parts(data)
            except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
                raise CliplabError(f"{m}: unreadable store manifest ({type(err).__name__}: {err})") from None
            self._manifests[rank] = data
        head = self._manifests.get(0) or next(iter(self._manifests.values()))
        self.dim: int = int(head["dim"])
        self.dtype: str = head["dtype"]
        self.model_id: str | None = head.get("model_id")
        self.weights: str | None = head.get("weights")  # the embedding model's; None in older stores
        self._cache: tuple[np.ndarray, Any] | None = None

    # -- creation ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], dim: int, dtype: str = "float16", model_id: str | None = None,
               rank: int = 0, weights: str | None = None) -> EmbeddingStore:
        """A new empty store; ``weights`` is the :func:`weights_fingerprint` of the model that fills it."""
        if dtype not in ("float16", "float32"):
            raise CliplabError(f"store dtype must be float16 or float32, got {dtype!r}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / _manifest_name(rank),
                   {"format": "cliplab-store/1", "dim": dim, "dtype": dtype, "model_id": model_id,
                    "weights": weights, "store_id": os.urandom(8).hex(), "rank": rank, "normalized": True,
                    "parts": []})
        return cls(path)

    def check_model(self, model: Any, name: str) -> None:
        """A query model must make vectors of the store's size, with the store's weights where it recorded them."""
        if model.cfg.embed_dim != self.dim:
            raise CliplabError(f"{self.path}: the store holds {self.dim}-d vectors but {name} makes "
                               f"{model.cfg.embed_dim}-d ones; query it with the model that built it")
        if self.weights is not None and weights_fingerprint(model) != self.weights:
            raise CliplabError(f"{self.path}: was embedded with other weights than those of {name} "
                               f"(built with {self.model_id}); query it with the model that built it")

    def query_model(self, checkpoint: str | None = None) -> str:
        """The model that encodes queries: ``checkpoint`` if given, else the one the store was embedded with,
        which must still exist (a training run prunes its older checkpoints as it goes on)."""
        if checkpoint:
            return checkpoint
        if not self.model_id:
            raise CliplabError(f"{self.path}: the store does not name its model; pass --checkpoint")
        if os.path.isabs(self.model_id) and not os.path.exists(self.model_id):
            raise CliplabError(f"{self.path}: the checkpoint this store was embedded with, {self.model_id}, no "
                               "longer exists (pruned by later training?); pass --checkpoint with a model of the "
                               "same weights, or re-embed")
        return self.model_id

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], dim: int, dtype: str = "float16",
                       model_id: str | None = None, rank: int = 0, weights: str | None = None) -> EmbeddingStore:
        path = Path(path)
        if any(path.glob("manifest*.json")):  # any rank's: a new rank joins only a store of its own model
            store = cls(path)
            if store.dim != dim:
                raise CliplabError(f"{path}: store holds {store.dim}-d vectors but the model makes {dim}-d ones")
            if model_id and store.model_id and not same_model(store.model_id, model_id):
                raise CliplabError(f"{path}: store was built with {store.model_id}, not {model_id}")
            if weights and store.weights and weights != store.weights:
                raise CliplabError(f"{path}: store was built with other weights than those of {model_id} "
                                   "(the checkpoint changed since); embed into a new store")
            if (path / _manifest_name(rank)).exists():
                return store
        # each rank writes only its own manifest, so ranks starting together never overwrite each other
        return cls.create(path, dim, dtype, model_id, rank=rank, weights=weights)

    # -- writing ----------------------------------------------------------------------------------
    def append_part(self, vectors: np.ndarray, metadata: list[dict[str, Any]], rank: int = 0) -> str:
        """Write one part (vectors (n, D) + n metadata rows) atomically, then record it in the manifest."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(metadata):
            raise CliplabError(f"{self.path}: part of shape {vectors.shape} with {len(metadata)} rows does not fit "
                               f"a {self.dim}-d store")
        manifest = self._manifests.setdefault(rank, {**self._manifests[min(self._manifests)], "rank": rank,
                                                     "parts": []})
        name = f"part-r{rank}-{len(manifest['parts']):05d}" if rank else f"part-{len(manifest['parts']):05d}"
        with atomic_path(self.path / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, vectors.astype(self.dtype))  # a file object: np.save would append ".npy" to a path
        table = pa.table({c: [row.get(c) for row in metadata] for c in COLUMNS}, schema=_schema())
        with atomic_path(self.path / f"{name}.parquet", suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        manifest["parts"].append({"name": name, "count": len(vectors)})
        write_json(self.path / _manifest_name(rank), manifest)
        self._cache = None
        return name

    # -- reading ----------------------------------------------------------------------------------
    def parts(self) -> list[dict[str, Any]]:
        return [p for rank in sorted(self._manifests) for p in self._manifests[rank]["parts"]]

    def __len__(self) -> int:
        return sum(p["count"] for p in self.parts())

    def fingerprint(self) -> str:
        """Changes whenever a part is added, and differs between two stores built in the same folder: an index
        built on an older store is detectably stale."""
        head = {rank: {k: m.get(k) for k in ("store_id", "model_id", "weights", "dtype")}
                for rank, m in sorted(self._manifests.items())}
        return hashlib.sha256(json.dumps([head, self.parts()]).encode()).hexdigest()[:16]

    def _load(self) -> tuple[np.ndarray, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._cache is None:
            vecs, tables = [], []
            for part in self.parts():
                try:
                    v = np.load(self.path / f"{part['name']}.npy", mmap_mode="r")
                    # parts written before the schema was fixed may hold null-typed columns: cast them to it
                    t = pq.read_table(self.path / f"{part['name']}.parquet").select(COLUMNS).cast(_schema())
                except (OSError, ValueError, EOFError, KeyError, TypeError, pa.ArrowException) as err:
                    raise CliplabError(f"{self.path / part['name']}: unreadable store part ({err})") from None
                self._check_vectors(v, part["name"])
                if len(v) != part["count"] or t.num_rows != part["count"]:
                    raise CliplabError(f"{self.path / part['name']}: has {len(v)} vectors, manifest says "
                                       f"{part['count']}")
                vecs.append(v)
                tables.append(t)
            vectors = np.concatenate(vecs) if vecs else np.zeros((0, self.dim), self.dtype)
            table = pa.concat_tables(tables, promote_options="default") if tables else _schema().empty_table()
            self._cache = (vectors, table)
        return self._cache

    def _check_vectors(self, v: np.ndarray, name: str) -> None:
        """A part must hold float vectors of the store's width: a part file copied in from another store or
        model would otherwise reach the index (a faiss assertion) or be concatenated with the others."""
        if v.ndim == 2 and v.shape[1] == self.dim and np.issubdtype(v.dtype, np.floating):
            return
        held = (f"{v.dtype} values" if v.ndim == 2 and v.shape[1] == self.dim
                else f"{v.shape[1]}-d vectors" if v.ndim == 2 else f"an array of shape {v.shape}")
        raise CliplabError(f"{self.path / name}.npy: holds {held}, but the store holds {self.dim}-d float vectors")

    def vectors(self, dtype: Any = np.float32) -> np.ndarray:
        return self._load()[0].astype(dtype, copy=False)

    def metadata(self) -> Any:
        """A pyarrow Table with columns path, width, height, caption; row i is id i."""
        return self._load()[1]

    def get(self, item_id: int) -> dict[str, Any]:
        table = self.metadata()
        if not 0 <= item_id < table.num_rows:
            raise CliplabError(f"{self.path}: no item {item_id}")
        return {c: table.column(c)[item_id].as_py() for c in COLUMNS}

    def done_keys(self, column: str = "path") -> set[Any]:
        return set(self.metadata().column(column).to_pylist())
