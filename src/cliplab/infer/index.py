"""FAISS indexes over an embedding store: exact (flat inner product) or approximate (IVF, HNSW).

Vectors are L2-normalised, so inner product is cosine similarity. An approximate index tunes its search
breadth (IVF ``nprobe``, HNSW ``efSearch``) to the smallest that reaches a target recall@10 against exact
search when it is built, and records both in its JSON sidecar, with the store's
fingerprint so a stale index (built before more parts were added) is noticed and rebuilt (of the same kind, with
the same settings), and with the size and checksum of its index file, so it never describes another one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from cliplab.errors import CliplabError
from cliplab.fileio import atomic_path

__all__ = ["SearchIndex", "build_index", "load_or_build_index"]

INDEX_FILE, SIDECAR = "index.faiss", "index.json"
KINDS = ("flat", "ivf", "hnsw")


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
        self.stale: str | None = None  # why a loaded index's sidecar was not trusted

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
        """The index and its sidecar, each written under a temporary name, then renamed into place, the sidecar
        last: a kill or a full disk before both are complete leaves the old pair as it was. The sidecar records
        the size and SHA-256 of its index file, so in the instant between the two renames the old sidecar does
        not vouch for the new index."""
        faiss = _faiss()
        folder = Path(folder)
        with atomic_path(folder / SIDECAR) as sidecar, atomic_path(folder / INDEX_FILE, suffix=".faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
            info = {**self.info, "index_bytes": tmp.stat().st_size, "index_sha256": _sha256(tmp)}
            sidecar.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        # leaving the block renames the index (the inner one) into place first, then the sidecar
        self.info = info

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> SearchIndex:
        """The saved index; a one-line error naming the file (index or sidecar) that cannot be read. A sidecar
        of another index file (its size or checksum differ, or, in one older than checksums, its kind) is not
        trusted: the index's ``stale`` says so, and its info, of the index itself, has no store fingerprint."""
        folder = Path(folder)
        info = _read_sidecar(folder)
        if not (folder / INDEX_FILE).is_file():
            raise CliplabError(f"{folder / INDEX_FILE}: missing (its sidecar {SIDECAR} is there)")
        index, size, digest = _read_index(folder / INDEX_FILE)
        if info.get("index_sha256", digest) != digest or info.get("index_bytes", size) != size \
                or info.get("kind") != _kind_of(index):
            idx = cls(index, {"kind": _kind_of(index), "count": index.ntotal, "dim": index.d,
                              "store_fingerprint": None})
            idx.stale = f"{folder / SIDECAR}: not the sidecar of this {INDEX_FILE} (a save cut short?)"
            return idx
        _set_breadth(index, info, folder / SIDECAR)
        return cls(index, info)


def _read_sidecar(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar of the index saved in ``folder``: a JSON object, else a one-line error naming it."""
    path = Path(folder) / SIDECAR
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CliplabError(f"{path}: unreadable index sidecar ({str(err).splitlines()[0]})") from None
    if not isinstance(info, dict):
        raise CliplabError(f"{path}: unreadable index sidecar (expected a JSON object)")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_index(path: Path) -> tuple[Any, int, str]:
    """The index in ``path``, with the size and SHA-256 of the very bytes it was parsed from: hashed as faiss
    reads them, in one pass, so an index file swapped in meanwhile cannot pass for the one hashed."""
    faiss = _faiss()
    digest, size, short = hashlib.sha256(), 0, False

    def read(n: int) -> bytes:
        nonlocal size, short
        chunk = fh.read(n)
        digest.update(chunk)
        size, short = size + len(chunk), len(chunk) < n
        return chunk

    try:
        with open(path, "rb") as fh:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))
            while read(2**20):  # anything after the index counts too
                pass
    except (OSError, ValueError, RuntimeError) as err:
        # faiss's own message follows its C++ location ("Error in ... at FILE:LINE: ")
        reason = re.sub(r"^Error in .* at \S+:\d+: (Error: )?", "", str(err).splitlines()[0])
        reason = "truncated" if short else reason
        raise CliplabError(f"{path}: unreadable index ({reason})") from None
    return index, size, digest.hexdigest()


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
        info.update(nlist=nlist, nprobe=index.nprobe, **_breadth_origin(nprobe, target_recall))
    else:
        while ef_search is None and recall < target_recall and index.hnsw.efSearch < 4096:
            index.hnsw.efSearch *= 2
            recall = probe(index)
        info.update(M=hnsw_m, efSearch=index.hnsw.efSearch, **_breadth_origin(ef_search, target_recall))
    info["recall_at_10"] = round(recall, 4)
    info["tuning_seconds"] = round(time.perf_counter() - t0 - info["build_seconds"], 3)
    return SearchIndex(index, info)


def _breadth_origin(fixed: int | None, target_recall: float) -> dict[str, Any]:
    """For the sidecar: whether the search breadth was given (kept as it is when the index is rebuilt) or tuned
    (tuned again, to the same target recall, on the grown store)."""
    return {"breadth": "fixed"} if fixed is not None else {"breadth": "tuned", "target_recall": target_recall}


def load_or_build_index(store: Any, kind: str | None = None) -> SearchIndex:
    """The store's saved index if it is current (and of ``kind``), else a new one (saved beside the store).

    A new one keeps the old one's kind and settings, as its sidecar records them, unless ``kind`` asks for
    another: a store that grew keeps the index its user chose, and an exact index does not turn approximate at
    100k items. Each rebuild but one of another ``kind`` is noted (it can take minutes, and replaces the file);
    an index that cannot be read is rebuilt too: it is derived from the store alone."""
    folder = Path(store.path)
    old = None  # the sidecar of the index there
    if (folder / SIDECAR).exists():
        try:
            old = _read_sidecar(folder)
            idx = SearchIndex.load(folder)
        except CliplabError as err:
            _note(f"{err}; rebuilding it")
        else:
            current = idx.stale is None and idx.info.get("store_fingerprint") == store.fingerprint()
            if current and kind in (None, idx.info.get("kind")):
                return idx
            why = idx.stale or (None if current else f"{folder}: the store changed since the index was built")
            if why is not None and kind in (None, old.get("kind")):
                _note(f"{why}; rebuilding its {_rebuild_args(old, kind, len(store))['kind']} index")
    idx = build_index(store.vectors(), fingerprint=store.fingerprint(), **_rebuild_args(old, kind, len(store)))
    try:
        idx.save(folder)
    except OSError as err:  # a read-only or full store folder: the query itself needs no disk
        _note(f"{err.filename or folder}: cannot save the index ({err.strerror or err}); searching with one built "
              "in memory")
    return idx


def _rebuild_args(old: dict[str, Any] | None, kind: str | None, n: int) -> dict[str, Any]:
    """:func:`build_index` arguments for a new index over ``n`` items in place of the one whose sidecar was
    ``old`` (None: none, or unreadable): its kind and settings unless ``kind`` asks for another. A sidecar
    without ``breadth`` predates it: its breadth is taken for tuned, as ``cliplab index`` does by default.
    ``nlist`` is not kept: it follows the number of items. Values spoilt by a hand edit are left to the defaults."""
    old = old or {}
    kind = kind or (old.get("kind") if old.get("kind") in KINDS else None) or ("flat" if n < 100_000 else "hnsw")
    args: dict[str, Any] = {"kind": kind}
    if kind == "flat" or old.get("kind") != kind:
        return args
    recall = old.get("target_recall")
    if isinstance(recall, int | float) and not isinstance(recall, bool) and 0 < recall <= 1:
        args["target_recall"] = float(recall)
    name, arg = ("nprobe", "nprobe") if kind == "ivf" else ("efSearch", "ef_search")
    if old.get("breadth") == "fixed" and _is_count(old.get(name)):
        args[arg] = old[name]
    if kind == "hnsw" and _is_count(old.get("M")):
        args["hnsw_m"] = old["M"]
    return args


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _note(message: str) -> None:
    """A one-line note (``cliplab`` prints it as ``note: ...``)."""
    import warnings

    from cliplab.errors import CliplabWarning

    warnings.warn(message, CliplabWarning, stacklevel=3)
