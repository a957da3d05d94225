"""A store part must hold float vectors of the store's width: anything else is a one-line error naming the part."""

import numpy as np
import pytest

from cliplab.errors import CliplabError
from cliplab.infer.store import EmbeddingStore


def _store(tmp_path):
    store = EmbeddingStore.create(tmp_path / "s", dim=16)
    store.append_part(np.eye(4, 16, dtype=np.float32), [{"path": f"/img/{i}.png"} for i in range(4)])
    return tmp_path / "s" / "part-00000.npy"


@pytest.mark.parametrize(("array", "held"), [
    (np.zeros((4, 8), np.float16), "8-d vectors"),  # a part from another model's store
    (np.zeros((4, 16, 1), np.float16), r"an array of shape \(4, 16, 1\)"),
    (np.zeros(4, np.float16), r"an array of shape \(4,\)"),
    (np.zeros((4, 16), np.int64), "int64 values"),
])
def test_a_part_of_another_shape_or_type_is_a_one_line_error(tmp_path, array, held):
    part = _store(tmp_path)
    np.save(part, array)
    with pytest.raises(CliplabError, match=rf"part-00000\.npy: holds {held}, but the store holds 16-d float "
                                           r"vectors$"):
        EmbeddingStore(tmp_path / "s").vectors()


def test_a_scalar_part_is_named_too(tmp_path):
    np.save(_store(tmp_path), np.float32(1.0))
    with pytest.raises(CliplabError, match=r"part-00000\.npy: holds an array of shape \(\)"):
        EmbeddingStore(tmp_path / "s").metadata()


def test_a_float32_part_in_a_float16_store_still_reads(tmp_path):
    np.save(_store(tmp_path), np.eye(4, 16, dtype=np.float64))
    assert EmbeddingStore(tmp_path / "s").vectors().shape == (4, 16)
