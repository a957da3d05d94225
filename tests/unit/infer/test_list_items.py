"""What `cliplab embed` lists from a folder or CSV, and what it skips (with a reason) rather than crash on."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import cliplab
from cliplab.config import PreprocessConfig
from cliplab.errors import CliplabError
from cliplab.infer.embed import embed_collection, list_items
from cliplab.infer.store import EmbeddingStore
from cliplab.transforms import Preprocess, load_image

BAD_EXIF = b"Exif\x00\x00garbage-exif-data"  # Pillow: "SyntaxError: not a TIFF file" when it is parsed


def _png(path, colour=(200, 30, 30)):
    Image.new("RGB", (40, 40), colour).save(path)
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cliplab.create_model("ViT-Tiny-32px").eval()


def _embed(model, items, store_path, part_size=2):
    store = EmbeddingStore.open_or_create(store_path, dim=model.cfg.embed_dim)
    report = embed_collection(model, cliplab.api.model_io(model)[0], items, store, part_size=part_size,
                              progress=False)
    return report, EmbeddingStore(store_path)


def test_a_jpeg_with_malformed_exif_is_kept_unrotated(tmp_path, model):
    Image.new("RGB", (40, 40), (10, 200, 10)).save(tmp_path / "exif.jpg", exif=BAD_EXIF)
    _png(tmp_path / "ok.png")
    img = load_image(tmp_path / "exif.jpg")
    pixels = Preprocess(PreprocessConfig(image_size=32))(img)
    assert pixels.shape == (3, 32, 32)
    report, store = _embed(model, list_items(tmp_path), tmp_path / "s")
    assert report.embedded == 2 and not report.skipped and len(store) == 2


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(tmp_path, model):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png")
    _png(os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    _png(folder / "z.png")
    items = list_items(folder)
    bad = [i for i in items if "skip" in i]
    assert len(items) == 3 and len(bad) == 1
    assert bad[0]["skip"] == "file name is not valid UTF-8" and bad[0]["source"].endswith("caf\\xe9.png")
    report, store = _embed(model, items, tmp_path / "s", part_size=1)
    assert report.embedded == 2 and [b.source for b in report.skipped] == [bad[0]["source"]] and len(store) == 2
    again, _ = _embed(model, list_items(folder), tmp_path / "s")  # a resumed run skips it again, no crash
    assert again.embedded == 0 and again.already_done == 2 and len(again.skipped) == 1


def test_a_caption_that_is_not_utf8_skips_its_row(tmp_path, model):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "d.csv").write_bytes(b"filepath,title\na.png,a red circle\nb.png,caf\xe9 noir\n")
    items = list_items(tmp_path / "d.csv", caption_key="title")
    assert [i.get("skip") for i in items] == [None, "caption is not valid UTF-8"]
    assert items[1]["source"] == f"{tmp_path / 'd.csv'}:3"
    report, store = _embed(model, items, tmp_path / "s")
    assert report.embedded == 1 and len(report.skipped) == 1 and store.get(0)["caption"] == "a red circle"


def test_a_symlink_keeps_its_name_and_a_second_name_is_skipped(tmp_path, model):
    folder, outside = tmp_path / "imgs", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    _png(folder / "b.png")
    (folder / "a-link.png").symlink_to(folder / "b.png")  # sorts before the file it names
    (folder / "c.png").symlink_to(_png(outside / "target.png", (0, 0, 255)))
    items = list_items(folder)
    assert [i["path"] for i in items] == [str(folder / n) for n in ("a-link.png", "b.png", "c.png")]
    assert items[0]["skip"] == f"same file as {folder / 'b.png'}" and "skip" not in items[1]
    assert "skip" not in items[2]  # a link to a file outside the folder is its only name there
    report, store = _embed(model, items, tmp_path / "s")
    assert report.embedded == 2 and len(report.skipped) == 1
    assert store.done_keys() == {str(folder / "b.png"), str(folder / "c.png")}


def test_a_store_of_resolved_paths_resumes_without_duplicates(tmp_path, model):
    """Stores embedded before symlinks kept their names hold the resolved paths."""
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        _png(real / f"{i}.png", (i * 80, 0, 0))
    (tmp_path / "alias").symlink_to(real)
    store = EmbeddingStore.create(tmp_path / "s", dim=model.cfg.embed_dim)
    store.append_part(np.eye(3, model.cfg.embed_dim, dtype=np.float32),
                      [{"path": str(real / f"{i}.png"), "width": 40, "height": 40} for i in range(3)])
    report, again = _embed(model, list_items(tmp_path / "alias"), tmp_path / "s")
    assert report.embedded == 0 and report.already_done == 3 and len(again) == 3


def test_an_empty_folder_and_a_single_image_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliplabError, match=r"empty: no images found \(looked for \.jpg"):
        list_items(tmp_path / "empty")
    _png(tmp_path / "photo.png")
    with pytest.raises(CliplabError, match=r"photo\.png: a single image; give its folder, or a CSV"):
        list_items(tmp_path / "photo.png")
    (tmp_path / "head.csv").write_text("filepath\n")
    with pytest.raises(CliplabError, match=r"head\.csv: no images found"):
        list_items(tmp_path / "head.csv")


def test_a_link_listed_before_its_target_in_a_csv_resumes_as_a_row_of_its_own(tmp_path, model):
    """The fallback match by resolved path (for stores of resolved paths) comes after every exact match."""
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", (0, 255, 0))
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("filepath\na.png\nb.png\n")
    _embed(model, list_items(tmp_path / "d.csv"), tmp_path / "s")
    (tmp_path / "d.csv").write_text("filepath\nlink.png\na.png\nb.png\n")  # a row added at the top
    report, store = _embed(model, list_items(tmp_path / "d.csv"), tmp_path / "s")
    assert report.embedded == 1 and report.already_done == 2
    assert store.metadata().column("path").to_pylist() == [str(tmp_path / n) for n in ("a.png", "b.png", "link.png")]


def test_a_shard_caption_that_is_not_utf8_skips_its_image(tmp_path, model):
    from tests.helpers import write_tar

    png = (_png(tmp_path / "x.png")).read_bytes()
    shard = write_tar(tmp_path / "shard.tar", {"a.png": png, "a.txt": b"caf\xe9 noir", "b.png": png,
                                               "b.txt": b"a red square"})
    items = list_items(shard)
    assert [i.get("skip") for i in items] == ["caption is not valid UTF-8", None]
    assert items[0]["source"] == f"{tmp_path / 'shard'}.tar#a.png"
    report, store = _embed(model, items, tmp_path / "s")
    assert report.embedded == 1 and [b.source for b in report.skipped] == [items[0]["source"]]
    assert store.metadata().column("caption").to_pylist() == ["a red square"]


def test_bad_csv_rows_are_named_by_their_row(tmp_path, model):
    _png(tmp_path / "ok.png")
    csv = tmp_path / "d.csv"
    csv.write_text("filepath,title\n,a\nok.png,b\n.,c\nnope.png,d\n")
    report, store = _embed(model, list_items(csv, caption_key="title"), tmp_path / "s")
    assert report.embedded == 1 and len(store) == 1
    assert [(b.source, b.reason) for b in report.skipped] == [
        (f"{csv}:2", "empty filepath cell"),
        (f"{csv}:4 ({tmp_path})", "a folder, not an image"),
        (f"{csv}:5 ({tmp_path / 'nope.png'})", "file not found")]
