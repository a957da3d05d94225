"""FAISS indexes over an embedding store: exact (flat inner product) or approximate (IVF, HNSW).

Vectors are L2-normalised, so inner product is cosine similarity. An approximate index measures its
recall@10 against exact search when it is built and records it in its JSON sidecar, with the store's
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
        faiss = _faiss()
        folder = Path(folder)
        with atomic_path(folder / INDEX_FILE, suffix=".faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        write_json(folder / SIDECAR, self.info)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SearchIndex:
        faiss = _faiss()
        folder = Path(folder)
        try:
            info = json.loads((folder / SIDECAR).read_text())
            index = faiss.read_index(str(folder / INDEX_FILE))
        except (OSError, ValueError, RuntimeError) as err:
            raise CliplabError(f"{folder / INDEX_FILE}: unreadable index ({str(err).splitlines()[0]})") from None
        return cls(index, info)


def _recall_at_10(index: Any, vectors: np.ndarray, n_queries: int = 200, seed: int = 0) -> float:
    faiss = _faiss()
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), size=min(n_queries, len(vectors)), replace=False)]
    q = q + rng.normal(0, 0.01, q.shape).astype(np.float32)  # near, not exactly on, stored vectors
    q = _normalise(q)
    k = min(10, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(q, k)
    _, got = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got, strict=True)]))


def build_index(vectors: np.ndarray, kind: str = "flat", *, fingerprint: str | None = None,
                nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32,
                ef_search: int = 128) -> SearchIndex:
    """Build an index over (N, D) vectors; approximate kinds report their measured recall@10."""
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
        index.nprobe = nprobe or max(1, min(nlist, nlist // 16 + 8))
        info.update(nlist=nlist, nprobe=index.nprobe)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(x)
        index.hnsw.efSearch = ef_search
        info.update(M=hnsw_m, efSearch=ef_search)
    else:
        raise CliplabError(f"unknown index kind {kind!r} (flat, ivf or hnsw)")
    info["build_seconds"] = round(time.perf_counter() - t0, 3)
    info["recall_at_10"] = 1.0 if kind == "flat" else round(_recall_at_10(index, x), 4)
    return SearchIndex(index, info)


def load_or_build_index(store: Any, kind: str | None = None) -> SearchIndex:
    """The store's saved index if it is current (and of ``kind``), else a new one (saved beside the store)."""
    folder = Path(store.path)
    if (folder / SIDECAR).exists():
        idx = SearchIndex.load(folder)
        if idx.info.get("store_fingerprint") == store.fingerprint() and kind in (None, idx.info.get("kind")):
            return idx
    if kind is None:
        kind = "flat" if len(store) < 100_000 else "hnsw"
    idx = build_index(store.vectors(), kind, fingerprint=store.fingerprint())
    idx.save(folder)
    return idx
