"""Stores and indexes that older or interrupted runs left behind open, or fail in one line."""

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cliplab.errors import CliplabError
from cliplab.infer.index import SIDECAR, SearchIndex, build_index, load_or_build_index
from cliplab.infer.store import EmbeddingStore


def _unit(n, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rows(n, start=0, caption=None):
    return [{"path": f"/img/{start + i}.png", "width": 10, "height": 20, "caption": caption} for i in range(n)]


def test_parts_with_and_without_captions_read_as_one_table(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(2), _rows(2))  # no captions in this part
    store.append_part(_unit(2, seed=1), _rows(2, 2, caption="a red circle"))
    store.append_part(_unit(1, seed=2), [{"path": None, "caption": "a text"}])  # no path, no size
    table = EmbeddingStore(tmp_path / "s").metadata()
    assert table.column("caption").to_pylist() == [None, None, "a red circle", "a red circle", "a text"]
    assert str(table.schema.field("caption").type) == "string" and str(table.schema.field("width").type) == "int64"


def test_parts_written_without_a_schema_still_open(tmp_path):
    """Stores written before the schema was fixed hold null-typed columns in some parts."""
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(2), _rows(2, caption="x"))
    store.append_part(_unit(2, seed=1), _rows(2, 2))
    pq.write_table(pa.table({c: [r[c] for r in _rows(2, 2)] for c in ("path", "width", "height", "caption")}),
                   tmp_path / "s" / "part-00001.parquet")  # as the old code wrote it: caption of type null
    again = EmbeddingStore(tmp_path / "s")
    assert again.metadata().column("caption").to_pylist() == ["x", "x", None, None]
    assert again.done_keys() == {f"/img/{i}.png" for i in range(4)}


def test_empty_store_has_the_same_columns(tmp_path):
    table = EmbeddingStore.create(tmp_path / "s", dim=16).metadata()
    assert table.num_rows == 0 and str(table.schema.field("path").type) == "string"


@pytest.mark.parametrize("parts", [None, [{"name": "part-00000"}], ["part-00000"], [{"count": 2}]])
def test_a_hand_edited_parts_list_is_a_one_line_error(tmp_path, parts):
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(2), _rows(2))
    manifest = tmp_path / "s" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "parts": parts}))
    with pytest.raises(CliplabError, match=r"manifest\.json: unreadable store manifest"):
        len(EmbeddingStore(tmp_path / "s"))


def test_a_pruned_checkpoint_is_named_as_such(tmp_path):
    gone = tmp_path / "run" / "checkpoints" / "step-10"
    store = EmbeddingStore.create(tmp_path / "s", dim=16, model_id=str(gone))
    with pytest.raises(CliplabError, match=r"step-10, no longer exists \(pruned by later training\?\); pass "
                                           r"--checkpoint .* or re-embed"):
        store.query_model()
    assert store.query_model("other") == "other"  # an explicit model is used as given
    assert EmbeddingStore.create(tmp_path / "t", dim=16, model_id="ViT-B-32").query_model() == "ViT-B-32"


@pytest.mark.parametrize("sidecar", [{"kind": "ivf", "nprobe": 8}, {"kind": "hnsw", "efSearch": 64},
                                     {"nprobe": 8, "efSearch": 64}])
def test_a_sidecar_of_another_index_is_stale(tmp_path, sidecar):
    """A kill between writing index.faiss and index.json leaves the old sidecar beside the new index."""
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(30), _rows(30))
    load_or_build_index(store)  # flat
    info = json.loads((tmp_path / "s" / SIDECAR).read_text())
    (tmp_path / "s" / SIDECAR).write_text(json.dumps({**info, **sidecar}))  # the fingerprint still matches
    loaded = SearchIndex.load(tmp_path / "s")  # the breadth of another kind is not applied
    assert loaded.info["kind"] == "flat" and loaded.search(_unit(1, seed=5), 3)[1].shape == (1, 3)
    other = sidecar.get("kind", "flat") != "flat"
    if other:  # another kind's sidecar is not trusted: the index is rebuilt
        assert loaded.info["store_fingerprint"] is None and "not the sidecar of this index.faiss" in loaded.stale
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        idx = load_or_build_index(EmbeddingStore(tmp_path / "s"))
    assert [str(n.message).split(": ", 1)[1] for n in notes] == (
        [f"not the sidecar of this index.faiss (a save cut short?); rebuilding its {sidecar['kind']} index"]
        if other else [])
    assert idx.search(_unit(1, seed=5), 3)[1].shape == (1, 3)
    assert json.loads((tmp_path / "s" / SIDECAR).read_text())["store_fingerprint"] == store.fingerprint()


def _killed(*args, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C, or a kill, while the new index is being written


def _kill_the_second_rename(monkeypatch):
    """The index renamed into place, the kill before its sidecar's rename."""
    import os

    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("cut", ["writing the index", "before the sidecar"])
def test_a_save_cut_short_keeps_the_last_good_index(tmp_path, monkeypatch, cut):
    """The old index and its sidecar stay a valid pair until the new pair is complete; no temporary file stays."""
    import faiss

    from cliplab.infer import index as index_module

    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(300), _rows(300))
    build_index(store.vectors(), "hnsw", ef_search=16, fingerprint=store.fingerprint()).save(store.path)
    before = sorted(p.name for p in (tmp_path / "s").iterdir())
    if cut == "writing the index":
        monkeypatch.setattr(faiss, "write_index", _killed)
    else:  # the index written, its checksum being taken
        monkeypatch.setattr(index_module, "_sha256", _killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(store.vectors(), "flat", fingerprint=store.fingerprint()).save(store.path)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note: the old index is current and used as it is
        idx = load_or_build_index(EmbeddingStore(tmp_path / "s"))
    assert idx.info["kind"] == "hnsw" and idx.index.hnsw.efSearch == 16


def test_a_kill_between_the_two_renames_leaves_a_sidecar_that_vouches_for_nothing(tmp_path, monkeypatch):
    """The new index in place, the old sidecar beside it: its checksum tells them apart, though kind and store
    match. The rebuild keeps the old sidecar's settings, the last ones saved whole."""
    from cliplab.errors import CliplabWarning

    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(300), _rows(300))
    build_index(store.vectors(), "hnsw", ef_search=16, fingerprint=store.fingerprint()).save(store.path)
    _kill_the_second_rename(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        build_index(store.vectors(), "hnsw", ef_search=40, fingerprint=store.fingerprint()).save(store.path)
    monkeypatch.undo()
    assert SearchIndex.load(tmp_path / "s").stale is not None
    with pytest.warns(CliplabWarning, match=r"s/index\.json: not the sidecar of this index\.faiss \(a save cut "
                                            r"short\?\); rebuilding its hnsw index$"):
        idx = load_or_build_index(EmbeddingStore(tmp_path / "s"))
    assert idx.index.hnsw.efSearch == 16 and SearchIndex.load(tmp_path / "s").stale is None


def test_a_sidecar_names_its_index_by_size_and_checksum(tmp_path):
    """An index file changed under its sidecar (same kind, same count) is not trusted; one it describes is."""
    build_index(_unit(50), "flat").save(tmp_path)
    info = json.loads((tmp_path / SIDECAR).read_text())
    assert info["index_bytes"] == (tmp_path / "index.faiss").stat().st_size and len(info["index_sha256"]) == 64
    assert SearchIndex.load(tmp_path).stale is None
    (tmp_path / "other").mkdir()
    build_index(_unit(50, seed=1), "flat").save(tmp_path / "other")
    (tmp_path / "other" / "index.faiss").replace(tmp_path / "index.faiss")  # same size, other vectors
    assert SearchIndex.load(tmp_path).stale is not None


def test_a_bad_breadth_in_the_sidecar_is_a_one_line_error(tmp_path):
    build_index(_unit(300), "ivf", nprobe=2).save(tmp_path)
    info = json.loads((tmp_path / SIDECAR).read_text())
    (tmp_path / SIDECAR).write_text(json.dumps({**info, "nprobe": "many"}))
    with pytest.raises(CliplabError, match="bad search breadth"):
        SearchIndex.load(tmp_path)


@pytest.mark.parametrize("damage,named", [
    (lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100]), "index.faiss"),  # truncated
    (lambda d: (d / "index.faiss").unlink(), "index.faiss"),
    (lambda d: (d / SIDECAR).write_text('{"kind": "flat"'), SIDECAR),
    (lambda d: (d / SIDECAR).write_text("[]"), SIDECAR),
])
def test_an_unreadable_index_is_rebuilt_with_a_note_naming_the_file(tmp_path, damage, named):
    from cliplab.errors import CliplabWarning

    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(_unit(30), _rows(30))
    load_or_build_index(store)
    damage(tmp_path / "s")
    with pytest.warns(CliplabWarning, match=rf"s/{named}: .*; rebuilding it") as notes:
        idx = load_or_build_index(EmbeddingStore(tmp_path / "s"))
    assert len(notes) == 1 and "\n" not in str(notes[0].message)
    assert idx.search(_unit(1, seed=5), 3)[1].shape == (1, 3)
    assert SearchIndex.load(tmp_path / "s").info["store_fingerprint"] == store.fingerprint()  # saved again
