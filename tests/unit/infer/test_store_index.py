import json

import numpy as np
import pytest

from cliplab.errors import CliplabError, CliplabWarning
from cliplab.infer.index import SearchIndex, build_index, load_or_build_index
from cliplab.infer.store import EmbeddingStore


def _rows(n, start=0):
    return [{"path": f"/img/{start + i}.png", "width": 10, "height": 20, "caption": None} for i in range(n)]


def _unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_round_trip_and_reopen(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", dim=16, model_id="m")
    store.append_part(_unit(5), _rows(5))
    store.append_part(_unit(3, seed=1), _rows(3, 5))
    again = EmbeddingStore(tmp_path / "s")
    assert len(again) == 8 and again.model_id == "m" and again.dim == 16
    np.testing.assert_allclose(again.vectors()[5:], _unit(3, seed=1), atol=1e-3)  # float16 storage
    assert again.get(6)["path"] == "/img/6.png" and again.done_keys() == {f"/img/{i}.png" for i in range(8)}


def test_a_kill_between_part_and_manifest_leaves_a_consistent_store(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(4), _rows(4))
    (tmp_path / "s" / "part-00001.npy").write_bytes(b"half-written")  # written, never named by the manifest
    (tmp_path / "s" / ".part-00001.npy.abc.tmp").write_bytes(b"x")
    reopened = EmbeddingStore(tmp_path / "s")
    assert len(reopened) == 4 and reopened.vectors().shape == (4, 16)
    reopened.append_part(_unit(2, seed=3), _rows(2, 4))  # the resumed run overwrites the orphan
    assert len(EmbeddingStore(tmp_path / "s")) == 6


def test_ranks_write_their_own_parts(tmp_path):
    for rank in (1, 0):
        s = EmbeddingStore.open_or_create(tmp_path / "s", dim=16, rank=rank)
        s.append_part(_unit(3, seed=rank), _rows(3, 10 * rank), rank=rank)
    merged = EmbeddingStore(tmp_path / "s")
    assert len(merged) == 6 and merged.get(0)["path"] == "/img/0.png" and merged.get(3)["path"] == "/img/10.png"


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CliplabError, match="not an embedding store"):
        EmbeddingStore(tmp_path)
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(2), _rows(2))
    (tmp_path / "s" / "part-00000.npy").write_bytes(b"")
    with pytest.raises(CliplabError, match=r"part-00000: unreadable store part"):
        EmbeddingStore(tmp_path / "s").vectors()
    with pytest.raises(CliplabError, match="does not fit"):
        store.append_part(_unit(2, d=8), _rows(2))


def test_flat_is_exact_and_k_is_capped():
    x = _unit(50)
    idx = build_index(x, "flat")
    q = _unit(4, seed=9)
    scores, ids = idx.search(q, 5)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :5]
    assert (ids == truth).all()
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, truth, 1), rtol=1e-5)
    _, ids = idx.search(q, 500)
    assert ids.shape == (4, 50) and (ids >= 0).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall(kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    x = (centres[rng.integers(0, 50, 8000)] + 0.3 * rng.normal(size=(8000, 32))).astype(np.float32)
    idx = build_index(x, kind)
    assert idx.info["recall_at_10"] >= 0.95


@pytest.mark.parametrize("kind,name,arg,start", [("ivf", "nprobe", "nprobe", 8), ("hnsw", "efSearch", "ef_search", 64)])
def test_search_breadth_is_tuned_to_the_target_recall(kind, name, arg, start):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))  # loose clusters: the starting breadth is not enough
    x = (centres[rng.integers(0, 50, 8000)] + 2.0 * rng.normal(size=(8000, 64))).astype(np.float32)
    extra = {"hnsw_m": 8} if kind == "hnsw" else {}
    idx = build_index(x, kind, **extra)
    tuned = idx.info[name]
    assert tuned > start and idx.info["recall_at_10"] >= 0.95
    # the tuner stopped at the first breadth that reached the target: half of it falls short
    assert build_index(x, kind, **extra, **{arg: tuned // 2}).info["recall_at_10"] < 0.95
    assert build_index(x, kind, **extra, target_recall=0.2).info[name] == start


def _loose_clusters(n, d, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d))
    return (centres[rng.integers(0, 50, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("kind,d,spread,extra", [("ivf", 32, 1.0, {}), ("hnsw", 64, 2.0, {"hnsw_m": 8})])
def test_tuned_recall_holds_for_other_queries(kind, d, spread, extra):
    """The recall the tuner reports is what other queries ~45° off stored vectors get (brute force as truth):
    tuning on queries that sit on stored vectors would stop at a breadth too small for real ones."""
    x = _loose_clusters(3000, d, spread)
    idx = build_index(x, kind, target_recall=0.95, **extra)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(1)
    q = unit[rng.choice(len(x), 300, replace=False)] + rng.normal(0, 1 / np.sqrt(d), (300, d))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    truth = np.argsort(-(q @ unit.T), axis=1)[:, :10]
    _, got = idx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)])
    assert recall >= 0.95 - 0.015
    assert abs(recall - idx.info["recall_at_10"]) <= 0.03


def test_ivf_rows_that_come_up_short_are_filled_by_exact_search():
    """nprobe=1 of 64 lists (~47 vectors each) cannot give 100 results: the rows are searched exactly."""
    x = np.random.default_rng(1).normal(size=(3000, 32)).astype(np.float32)
    idx = build_index(x, "ivf", nlist=64, nprobe=1)
    q = np.random.default_rng(5).normal(size=(5, 32)).astype(np.float32)
    scores, ids = idx.search(q, 100)
    assert ids.shape == (5, 100) and (ids >= 0).all()
    assert [len(set(row)) for row in ids] == [100] * 5
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.argsort(-(q @ unit.T), axis=1)[:, :100]
    assert [set(a) for a in ids] == [set(b) for b in truth]
    assert (np.diff(scores, axis=1) <= 0).all()


def test_target_recall_one_probes_every_list():
    x = np.random.default_rng(1).normal(size=(3000, 32)).astype(np.float32)
    idx = build_index(x, "ivf", nlist=64, target_recall=1.0)
    assert idx.info["nprobe"] == idx.index.nprobe == 64 and idx.info["recall_at_10"] == 1.0


def test_saved_index_keeps_its_tuned_breadth(tmp_path):
    idx = build_index(_unit(3000, d=32, seed=1), "ivf", nprobe=3)
    idx.save(tmp_path)
    again = SearchIndex.load(tmp_path)
    assert again.index.nprobe == 3 and again.info["nprobe"] == 3


def test_saved_index_detects_staleness(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(10), _rows(10))
    first = load_or_build_index(store)
    assert first.index.ntotal == 10 and SearchIndex.load(tmp_path / "s").info["count"] == 10
    store.append_part(_unit(5, seed=2), _rows(5, 10))
    with pytest.warns(CliplabWarning, match="the store changed since the index was built; rebuilding its flat index"):
        assert load_or_build_index(EmbeddingStore(tmp_path / "s")).index.ntotal == 15
    assert json.loads((tmp_path / "s" / "index.json").read_text())["count"] == 15


@pytest.mark.parametrize("kind,given,kept", [
    ("hnsw", {"ef_search": 16}, {"efSearch": 16, "breadth": "fixed"}),
    ("hnsw", {"hnsw_m": 8, "target_recall": 0.5}, {"M": 8, "breadth": "tuned", "target_recall": 0.5}),
    ("ivf", {"nprobe": 3}, {"nprobe": 3, "breadth": "fixed"}),
])
def test_a_store_that_grew_keeps_its_index_kind_and_settings(tmp_path, kind, given, kept):
    """As `cliplab index --kind hnsw --ef-search 16`, then more images embedded: the next search rebuilds the
    index as it was asked for (a fixed breadth stays fixed, a tuned one is tuned to the same target), and says so."""
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(300), _rows(300))
    build_index(store.vectors(), kind, fingerprint=store.fingerprint(), **given).save(store.path)
    store.append_part(_unit(100, seed=2), _rows(100, 300))
    with pytest.warns(CliplabWarning) as notes:
        idx = load_or_build_index(EmbeddingStore(tmp_path / "s"))
    assert [str(n.message) for n in notes] == [
        f"{tmp_path / 's'}: the store changed since the index was built; rebuilding its {kind} index"]
    saved = json.loads((tmp_path / "s" / "index.json").read_text())
    assert idx.index.ntotal == 400 and saved["count"] == 400 and saved["kind"] == kind
    assert {k: saved[k] for k in kept} == kept and {k: idx.info[k] for k in kept} == kept


@pytest.mark.parametrize("old,kind,n,args", [
    ({"kind": "flat"}, None, 200_000, {"kind": "flat"}),  # an exact index stays exact past 100k items
    (None, None, 200_000, {"kind": "hnsw"}),  # none (or an unreadable sidecar): the default
    ({"kind": "hnsw", "efSearch": 16, "M": 16}, None, 10, {"kind": "hnsw", "hnsw_m": 16}),  # older sidecar: tuned
    ({"kind": "ivf", "nlist": 4, "nprobe": 2, "breadth": "fixed"}, None, 10, {"kind": "ivf", "nprobe": 2}),
    ({"kind": "ivf", "nprobe": "many", "breadth": "fixed", "target_recall": 7}, None, 10, {"kind": "ivf"}),
    ({"kind": "hnsw", "efSearch": 16, "breadth": "fixed"}, "ivf", 10, {"kind": "ivf"}),  # another kind asked for
    ({"kind": "cube"}, None, 10, {"kind": "flat"}),
])
def test_a_rebuild_takes_the_old_sidecars_kind_and_settings(old, kind, n, args):
    from cliplab.infer.index import _rebuild_args

    assert _rebuild_args(old, kind, n) == args


def test_hand_edited_manifest_and_sidecar_are_one_line_errors(tmp_path):
    from cliplab.infer.index import SIDECAR

    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(2), _rows(2))
    manifest = tmp_path / "s" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["dtype"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(CliplabError, match=r"manifest\.json: unreadable store manifest \(KeyError"):
        EmbeddingStore(tmp_path / "s")
    build_index(_unit(20), "flat").save(tmp_path / "i")
    (tmp_path / "i" / SIDECAR).write_text("[]")
    with pytest.raises(CliplabError, match="expected a JSON object"):
        SearchIndex.load(tmp_path / "i")
