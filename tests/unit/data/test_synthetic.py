import csv
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cliplab.data.synthetic import (
    SHAPES,
    SyntheticDataset,
    SyntheticWorld,
    WorldConfig,
    labelled_set,
    retrieval_set,
    write_classification_folder,
    write_csv,
    write_shards,
)


def _fake_transform(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)


class _FakeTokenizer:
    def __call__(self, texts, truncate=False):
        return torch.tensor([[len(t)] for t in texts])


def test_deterministic():
    w = SyntheticWorld()
    a, b = w.sample(w.rng(0, 5)), w.sample(w.rng(0, 5))
    assert a.caption == b.caption and a.image.tobytes() == b.image.tobytes()
    assert a.image.size == (32, 32) and a.image.mode == "RGB"
    assert w.sample(w.rng(0, 6)).image.tobytes() != a.image.tobytes()


def test_held_out_never_in_training():
    w = SyntheticWorld()
    held = set(w.held_out_pairs())
    assert len(held) == 8 and len(w.seen_pairs()) == 56
    assert {c for c, _ in held} == set(w.cfg.colours) and {s for _, s in held} == set(w.cfg.shapes)
    seen_colours, seen_shapes = set(), set()
    for i in range(3000):
        s = w.sample(w.rng(1, i), "train")
        assert (s.colour, s.shape) not in held
        assert s.second is None or s.second not in held
        assert s.colour in s.caption or s.shape in s.caption
        seen_colours.add(s.colour)
        seen_shapes.add(s.shape)
    assert seen_colours == set(w.cfg.colours) and seen_shapes == set(w.cfg.shapes)


def test_custom_held_out():
    w = SyntheticWorld(WorldConfig(held_out=(("red", "star"),)))
    assert w.held_out_pairs() == [("red", "star")]


def test_batches_independent_of_workers_and_resumable():
    w = SyntheticWorld()
    ds = SyntheticDataset(w, _fake_transform, _FakeTokenizer(), batch_size=4, seed=3, num_batches=6)
    one = [b.images for b in DataLoader(ds, batch_size=None, num_workers=0)]
    two = [b.images for b in DataLoader(ds, batch_size=None, num_workers=2)]
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)
    tail = list(SyntheticDataset(w, _fake_transform, _FakeTokenizer(), batch_size=4, seed=3, start_batch=4,
                                 num_batches=2))
    assert torch.equal(tail[0].images, one[4]) and torch.equal(tail[1].images, one[5])
    other_rank = next(iter(SyntheticDataset(w, _fake_transform, _FakeTokenizer(), batch_size=4, seed=3, rank=1)))
    assert not torch.equal(other_rank.images, one[0])
    assert len({img.sum().item() for b in one for img in b}) > 20  # samples differ within the stream


def test_eval_sets():
    w = SyntheticWorld()
    ls = labelled_set(w, 2, "heldout")
    assert len(ls) == 16 and {k for _, k in ls} == {w.class_index(c, s) for c, s in w.held_out_pairs()}
    rs = retrieval_set(w, 10)
    assert len(rs) == 10 and all(isinstance(c, str) and c for _, c in rs)


def test_writers(tmp_path):
    w = SyntheticWorld()
    path = write_csv(w, 5, tmp_path / "csv")
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert len(rows) == 5 and (tmp_path / "csv" / rows[0]["filepath"]).exists() and rows[0]["title"]
    shards = write_shards(w, 5, tmp_path / "wds", per_shard=2)
    assert len(shards) == 3
    with tarfile.open(shards[0]) as tf:
        assert sorted(n.rsplit(".", 1)[1] for n in tf.getnames()) == ["png", "png", "txt", "txt"]
    out = write_classification_folder(w, 1, tmp_path / "cls", split="heldout")
    assert len(list(out.iterdir())) == 8


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_coverage_equals_drawing_the_whole_frame(shape):
    """Shapes are drawn once per (shape, radius, sub-pixel phase) and placed; that must equal drawing the
    shape sharp on the whole supersampled frame and box-averaging it, anywhere, edges included. (The frame
    is drawn with a margin and cropped: Pillow draws an ellipse cut by the image's edge a little differently
    from the same ellipse whole.)"""
    from PIL import Image, ImageDraw

    from cliplab.data.synthetic import _coverage, draw_sharp

    size, out, pad = 128, 32, 64
    rng = np.random.default_rng(0)
    for r in (26.88, 33.28, 43.52):
        for cx, cy in [*rng.uniform(-20, 148, (12, 2)), (0.0, 0.0), (127.0, 64.0), (64.4, 63.6)]:
            x, y = round(cx) + pad, round(cy) + pad
            frame = Image.new("L", (size + 2 * pad, size + 2 * pad), 0)
            draw_sharp(ImageDraw.Draw(frame), shape, x, y, r)
            frame = frame.crop((pad, pad, pad + size, pad + size))
            want = np.asarray(frame.resize((out, out), Image.BOX))  # (out, out) uint8
            got = _coverage(shape, cx, cy, r, size, out)
            assert got.shape == (out, out)
            np.testing.assert_array_equal(np.rint(got * 255), want, err_msg=f"{shape} r={r} at ({cx}, {cy})")
