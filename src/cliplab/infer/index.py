"""FAISS indexes over an embedding store: exact (flat inner product) or approximate (IVF, HNSW).

Vectors are L2-normalised, so inner product is cosine similarity. An approximate index tunes its search
breadth (IVF ``nprobe``, HNSW ``efSearch``) to the smallest that reaches a target recall@10 against exact
search when it is built, and records both in its JSON sidecar, with the store's
fingerprint so a stale index (built before more parts were added) is noticed and rebuilt.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.errors import CliplabError
from cliplab.fileio import atomic_path, write_json

__all__ = ["SearchIndex", "build_index", "load_or_build_index"]

INDEX_FILE, SIDECAR = "index.faiss", "index.json"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise CliplabError("indexing needs faiss: pip install 'cliplab[index]'") from None
    return faiss


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SearchIndex:
    def __init__(self, index: Any, info: dict[str, Any]) -> None:
        self.index, self.info = index, info

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query; never more results than items, never a -1 id."""
        q = _normalise(np.atleast_2d(queries))
        k = max(1, min(int(k), self.index.ntotal))
        scores, ids = self.index.search(q, k)
        if (ids < 0).any():  # an approximate index can come up short: fill from exact search of those rows
            exact = self._exact()
            bad = (ids < 0).any(axis=1)
            scores[bad], ids[bad] = exact.search(q[bad], k)
        return scores, ids

    def _exact(self) -> Any:
        faiss = _faiss()
        flat = faiss.IndexFlatIP(self.index.d)
        flat.add(self.index.reconstruct_n(0, self.index.ntotal))
        return flat

    def save(self, folder: str | os.PathLike[str]) -> None:
        """The index, then its sidecar; the old sidecar goes first, so a kill between the two leaves an index
        without one (rebuilt when next needed), never an index described by another's sidecar."""
        faiss = _faiss()
        folder = Path(folder)
        (folder / SIDECAR).unlink(missing_ok=True)
        with atomic_path(folder / INDEX_FILE, suffix=".faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        write_json(folder / SIDECAR, self.info)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SearchIndex:
        """The saved index; a one-line error naming the file (index or sidecar) that cannot be read."""
        faiss = _faiss()
        folder = Path(folder)
        try:
            info = json.loads((folder / SIDECAR).read_text())
        except (OSError, ValueError) as err:
            raise CliplabError(f"{folder / SIDECAR}: unreadable index sidecar ({str(err).splitlines()[0]})") from None
        if not isinstance(info, dict):
            raise CliplabError(f"{folder / SIDECAR}: unreadable index sidecar (expected a JSON object)")
        if not (folder / INDEX_FILE).is_file():
            raise CliplabError(f"{folder / INDEX_FILE}: missing (its sidecar {SIDECAR} is there)")
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except (OSError, ValueError, RuntimeError) as err:
            reason = str(err).splitlines()[0].rsplit("Error: ", 1)[-1]  # faiss's own: after its C++ location
            raise CliplabError(f"{folder / INDEX_FILE}: unreadable index ({reason})") from None
        if info.get("kind") != _kind_of(index):  # another index's sidecar (a save cut short): stale, not trusted
            info = {"kind": _kind_of(index), "count": index.ntotal, "dim": index.d, "store_fingerprint": None}
        _set_breadth(index, info, folder / SIDECAR)
        return cls(index, info)


def _kind_of(index: Any) -> str:
    """flat, ivf or hnsw, from the index itself (``faiss.read_index`` returns the concrete class)."""
    if hasattr(index, "nprobe"):
        return "ivf"
    return "hnsw" if hasattr(index, "hnsw") else "flat"


def _set_breadth(index: Any, info: dict[str, Any], sidecar: Path) -> None:
    """Apply the tuned search breadth the sidecar records, whether or not the file format kept it."""
    try:
        if "nprobe" in info and hasattr(index, "nprobe"):
            index.nprobe = int(info["nprobe"])
        if "efSearch" in info and hasattr(index, "hnsw"):
            index.hnsw.efSearch = int(info["efSearch"])
    except (TypeError, ValueError) as err:
        raise CliplabError(f"{sidecar}: bad search breadth ({err})") from None


class _RecallProbe:
    """recall@10 of an index against exact search.

    Queries are stored vectors moved by noise as long as themselves (about 45° away): a text query is
    never on top of the image it finds, and queries right next to stored vectors make any index look good.
    """

    def __init__(self, vectors: np.ndarray, n_queries: int = 200, seed: int = 0) -> None:
        faiss = _faiss()
        rng = np.random.default_rng(seed)
        q = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
        noise = rng.normal(0, 1 / np.sqrt(vectors.shape[1]), q.shape).astype(np.float32)  # (Q, D), norm ≈ 1
        self.queries = _normalise(q + noise)  # (Q, D)
        self.k = min(10, len(vectors))
        exact = faiss.IndexFlatIP(vectors.shape[1])
        exact.add(vectors)
        _, self.truth = exact.search(self.queries, self.k)  # (Q, k)

    def __call__(self, index: Any) -> float:
        _, got = index.search(self.queries, self.k)
        return float(np.mean([len(set(a) & set(b)) / self.k for a, b in zip(self.truth, got, strict=True)]))


def build_index(vectors: np.ndarray, kind: str = "flat", *, fingerprint: str | None = None,
                nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
                ef_search: int | None = None, target_recall: float = 0.95) -> SearchIndex:
    """Build an index over (N, D) vectors; approximate kinds report their measured recall@10.

    Unless ``nprobe`` / ``ef_search`` are given, the search breadth of an approximate index is doubled
    from a small start until recall@10 against exact search reaches ``target_recall``: the fastest
    setting that is accurate enough on this collection.
    """
    faiss = _faiss()
    x = _normalise(vectors)
    n, d = x.shape
    if n == 0:
        raise CliplabError("cannot index an empty store")
    t0 = time.perf_counter()
    info: dict[str, Any] = {"kind": kind, "count": n, "dim": d, "store_fingerprint": fingerprint}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
    elif kind == "ivf":
        nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        index.nprobe = min(nlist, nprobe or 8)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(x)
        index.hnsw.efSearch = ef_search or 64
    else:
        raise CliplabError(f"unknown index kind {kind!r} (flat, ivf or hnsw)")
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    if kind == "flat":
        info["recall_at_10"] = 1.0
        return SearchIndex(index, info)
    probe = _RecallProbe(x)
    recall = probe(index)
    if kind == "ivf":
        while nprobe is None and recall < target_recall and index.nprobe < nlist:
            index.nprobe = min(nlist, 2 * index.nprobe)
            recall = probe(index)
        info.update(nlist=nlist, nprobe=index.nprobe)
    else:
        while ef_search is None and recall < target_recall and index.hnsw.efSearch < 4096:
            index.hnsw.efSearch *= 2
            recall = probe(index)
        info.update(M=hnsw_m, efSearch=index.hnsw.efSearch)
    info["recall_at_10"] = round(recall, 4)
    info["tuning_seconds"] = round(time.perf_counter() - t0 - info["build_seconds"], 3)
    return SearchIndex(index, info)


def load_or_build_index(store: Any, kind: str | None = None) -> SearchIndex:
    """The store's saved index if it is current (and of ``kind``), else a new one (saved beside the store).
    An index that cannot be read is rebuilt too, with a note: it is derived from the store alone."""
    folder = Path(store.path)
    if (folder / SIDECAR).exists():
        try:
            idx = SearchIndex.load(folder)
        except CliplabError as err:
            _note(f"{err}; rebuilding it")
        else:
            if idx.info.get("store_fingerprint") == store.fingerprint() and kind in (None, idx.info.get("kind")):
                return idx
    if kind is None:
        kind = "flat" if len(store) < 100_000 else "hnsw"
    idx = build_index(store.vectors(), kind, fingerprint=store.fingerprint())
    try:
        idx.save(folder)
    except OSError as err:  # a read-only or full store folder: the query itself needs no disk
        _note(f"{err.filename or folder}: cannot save the index ({err.strerror or err}); searching with one built "
              "in memory")
    return idx


def _note(message: str) -> None:
    """A one-line note (``cliplab`` prints it as ``note: ...``)."""
    import warnings

    from cliplab.errors import CliplabWarning

    warnings.warn(message, CliplabWarning, stacklevel=3)
