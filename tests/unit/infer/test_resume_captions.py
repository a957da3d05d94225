"""Resuming a CSV: an image stored once is not stored again because its caption was added or changed, while
each of an image's caption rows (and a repeated row) stays a stored vector of its own."""

import pytest
import torch
from PIL import Image

import cliplab
from cliplab.infer.embed import embed_collection, list_items
from cliplab.infer.store import EmbeddingStore


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cliplab.create_model("ViT-Tiny-32px").eval()


@pytest.fixture
def images(tmp_path):
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 30, 30)).save(tmp_path / f"{i}.png")
    return tmp_path


def _embed(model, folder, rows, caption_key="title"):
    (folder / "d.csv").write_text("filepath,title\n" + "".join(f"{p},{c}\n" for p, c in rows))
    items = list_items(folder / "d.csv", caption_key=caption_key)
    store = EmbeddingStore.open_or_create(folder / "s", dim=model.cfg.embed_dim)
    report = embed_collection(model, cliplab.api.model_io(model)[0], items, store, part_size=2, progress=False)
    store = EmbeddingStore(folder / "s")
    return report, sorted(zip(store.metadata().column("path").to_pylist(),
                              store.metadata().column("caption").to_pylist(), strict=True))


def test_adding_the_caption_key_does_not_store_the_images_again(model, images):
    rows = [(f"{i}.png", f"shade {i}") for i in range(3)]
    _embed(model, images, rows, caption_key=None)
    report, stored = _embed(model, images, rows)
    assert report.embedded == 0 and report.already_done == 3 and report.other_caption == 3
    assert stored == [(str(images / f"{i}.png"), None) for i in range(3)]  # each once, as it was stored
    report, _ = _embed(model, images, rows, caption_key=None)  # and back without it
    assert report.embedded == 0 and report.already_done == 3 and report.other_caption == 0


def test_a_mended_caption_keeps_the_stored_row(model, images):
    _embed(model, images, [("0.png", "a red sqare"), ("1.png", "a green square")])
    report, stored = _embed(model, images, [("0.png", "a red square"), ("1.png", "a green square")])
    assert report.embedded == 0 and report.other_caption == 1
    assert stored == [(str(images / "0.png"), "a red sqare"), (str(images / "1.png"), "a green square")]


def test_every_caption_row_of_an_image_is_its_own_vector(model, images):
    _embed(model, images, [("0.png", "a"), ("0.png", "b")])
    # a caption mended, one added, and a row repeated: the mended one matches the row left over, the new
    # rows are embedded; rows are matched to their own caption first, whatever their order
    report, stored = _embed(model, images, [("0.png", "c"), ("0.png", "b"), ("0.png", "a2"), ("0.png", "b")])
    assert report.embedded == 2 and report.already_done == 2 and report.other_caption == 1
    path = str(images / "0.png")
    assert stored == [(path, "a"), (path, "a2"), (path, "b"), (path, "b")]  # "c" took "a"'s row
    again, _ = _embed(model, images, [("0.png", "c"), ("0.png", "b"), ("0.png", "a2"), ("0.png", "b")])
    assert again.embedded == 0 and again.already_done == 4
