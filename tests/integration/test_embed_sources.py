"""`cliplab embed` from tar shards, with --texts, and split across two torchrun processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cliplab.cli.main import main
from cliplab.data.shards import write_shards
from cliplab.data.synthetic import SyntheticWorld, write_folder
from cliplab.infer.embed import read_item_image
from cliplab.infer.store import EmbeddingStore
from tests.helpers import write_tar
from tests.integration.helpers import tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed-sources")
    tiny_checkpoint(root / "ckpt")
    imgs = write_folder(SyntheticWorld(), 24, root / "imgs")
    files = sorted(p for p in imgs.iterdir() if p.suffix == ".png")
    write_shards([(p, f"caption of {p.stem}") for p in files], root / "shards", per_shard=10)
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(imgs), "--output",
                 str(root / "folder-store"), "--dtype", "float32"]) == 0
    return root, files


def _column(store, name):
    return store.metadata().column(name).to_pylist()


def _by_path(store):
    return dict(zip(_column(store, "path"), store.vectors(), strict=True))


def test_shards_embed_like_the_files_and_resume(world, capsys):
    root, files = world
    pattern = str(root / "shards" / "{00000..00002}.tar")
    args = ["embed", "--checkpoint", str(root / "ckpt"), "--images", pattern, "--output", str(root / "shard-store"),
            "--dtype", "float32", "--batch-size", "7"]
    assert main(args) == 0
    store = EmbeddingStore(root / "shard-store")
    assert len(store) == 24
    captions = _column(store, "caption")
    assert sorted(captions) == sorted(f"caption of {p.stem}" for p in files)
    by_file = _by_path(EmbeddingStore(root / "folder-store"))
    for path, vec, caption in zip(_column(store, "path"), store.vectors(), captions, strict=True):
        assert ".tar#" in path
        source = str(files[0].parent / caption.removeprefix("caption of ")) + ".png"
        np.testing.assert_allclose(vec, by_file[source], atol=1e-6)  # same pixels, same vector
        assert read_item_image(path).size == read_item_image(source).size
    capsys.readouterr()
    assert main(args) == 0
    assert "embedded 0 image(s)" in capsys.readouterr().out and len(EmbeddingStore(root / "shard-store")) == 24
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "shards" / "{00000..00009}.tar"),
                 "--output", str(root / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_compiled_embed_equals_eager(world):
    """--compile: batches of 7, 7, 7 and a padded last one of 3 give the eager vectors."""
    root, _ = world
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--output",
                 str(root / "compiled-store"), "--dtype", "float32", "--batch-size", "7", "--compile"]) == 0
    compiled, eager = _by_path(EmbeddingStore(root / "compiled-store")), _by_path(EmbeddingStore(root / "folder-store"))
    assert compiled.keys() == eager.keys() and len(compiled) == 24
    for path, vec in compiled.items():
        np.testing.assert_allclose(vec, eager[path], atol=1e-5)


def test_texts_are_embedded_once(world, capsys):
    root, _ = world
    texts = root / "texts.txt"
    texts.write_text("a red circle\n\na blue star\n", encoding="utf-8")
    args = ["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--output",
            str(root / "folder-store"), "--texts", str(texts), "--dtype", "float32"]
    assert main(args) == 0
    tstore = EmbeddingStore(root / "folder-store" / "texts")
    assert _column(tstore, "caption") == ["a red circle", "a blue star"]
    vecs = tstore.vectors()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])
    texts.write_text("a red circle\na blue star\na green cross\n", encoding="utf-8")
    assert main(args) == 0
    assert "embedded 1 text(s)" in capsys.readouterr().out
    assert len(EmbeddingStore(root / "folder-store" / "texts")) == 3
    csv = root / "caps.csv"
    csv.write_text("filepath,title\nx.png,a cat\n", encoding="utf-8")
    assert main([*args[:-4], "--texts", str(csv)]) == 2  # a CSV needs --csv-caption-key
    assert "--csv-caption-key" in capsys.readouterr().err


def test_a_text_store_holds_each_text_once_however_it_was_built(world, tmp_path, capsys):
    root, _ = world
    texts = tmp_path / "t.txt"
    args = ["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--texts", str(texts)]
    texts.write_text("a cat\na dog\na cat\n")
    assert main([*args, "--output", str(tmp_path / "resumed")]) == 0
    assert "embedded 2 text(s)" in capsys.readouterr().out
    texts.write_text("a cat\na dog\na cat\na bird\na cat\n")
    assert main([*args, "--output", str(tmp_path / "resumed")]) == 0
    assert "embedded 1 text(s)" in capsys.readouterr().out
    assert main([*args, "--output", str(tmp_path / "fresh")]) == 0
    out = capsys.readouterr().out
    assert "embedded 3 text(s)" in out and "2 repeated line(s) counted once" in out
    for store in ("resumed", "fresh"):
        assert _column(EmbeddingStore(tmp_path / store / "texts"), "caption") == ["a cat", "a dog", "a bird"]


def test_csv_captions_are_texts_as_a_text_files_lines_are(world, tmp_path, capsys):
    """Stripped as a .txt file's lines are: "a cat " is the text "a cat", stored once."""
    root, _ = world
    (tmp_path / "t.csv").write_text('title\na cat\n"a cat "\n" a dog"\n')
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--texts",
                 str(tmp_path / "t.csv"), "--csv-caption-key", "title", "--output", str(tmp_path / "s")]) == 0
    assert _column(EmbeddingStore(tmp_path / "s" / "texts"), "caption") == ["a cat", "a dog"]


@pytest.mark.parametrize("name", ["caps.csv", "caps.txt"])
def test_texts_that_are_not_utf8_are_skipped_counted_and_listed(world, tmp_path, capsys, name):
    """A .txt file's bad line is skipped like a CSV's bad caption, named file:LINE, not fatal."""
    root, _ = world
    lines = [b"a red square", b"caf\xe9 au lait", b"a blue square"]
    texts = tmp_path / name
    texts.write_bytes(b"title\n" * name.endswith(".csv") + b"\n".join(lines) + b"\n")
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--output",
                 str(tmp_path / "s"), "--texts", str(texts), "--csv-caption-key", "title"]) == 0
    out = capsys.readouterr()
    listing = tmp_path / "s" / "skipped.jsonl"
    line, what = (3, "caption") if name.endswith(".csv") else (2, "line")
    assert f"embedded 2 text(s) into {tmp_path / 's' / 'texts'}, 0 already there, skipped 1 not valid UTF-8 " \
           f"(listed in {listing})" in out.out
    assert f"skipped {texts}:{line}: {what} is not valid UTF-8" in out.err
    assert [json.loads(r) for r in listing.read_text().splitlines()] == [
        {"source": f"{texts}:{line}", "reason": f"{what} is not valid UTF-8"}]
    assert _column(EmbeddingStore(tmp_path / "s" / "texts"), "caption") == ["a red square", "a blue square"]


def test_every_skipped_item_is_listed_in_the_store(world, tmp_path, capsys):
    root, files = world
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in files[:2]:
        (folder / f.name).write_bytes(f.read_bytes())
    for i in range(25):  # more than are named on stderr
        (folder / f"bad{i:02d}.png").write_bytes(b"not a png")
    args = ["embed", "--checkpoint", str(root / "ckpt"), "--images", str(folder), "--output", str(tmp_path / "s")]
    assert main(args) == 0
    out = capsys.readouterr()
    listing = tmp_path / "s" / "skipped.jsonl"
    assert f"skipped 25 unreadable or unusable (listed in {listing})" in out.out and "... and 5 more" in out.err
    rows = [json.loads(line) for line in listing.read_text().splitlines()]
    assert sorted(r["source"] for r in rows) == [str(folder / f"bad{i:02d}.png") for i in range(25)]
    assert all("unreadable image" in r["reason"] for r in rows)
    for i in range(25):  # mended: the resumed run embeds them, and skips nothing
        (folder / f"bad{i:02d}.png").write_bytes(files[2].read_bytes())
    assert main(args) == 0
    assert "skipped 0 unreadable or unusable\n" in capsys.readouterr().out and not listing.exists()


def test_torchrun_two_ranks_embed_each_item_once(world):
    root, _ = world
    out = root / "ddp-store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29541", "-m", "cliplab", "embed", "--checkpoint", str(root / "ckpt"), "--images",
           str(root / "imgs"), "--output", str(out), "--dtype", "float32", "--batch-size", "5"]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p.name for p in out.glob("manifest*.json")} == {"manifest.json", "manifest-r1.json"}
    merged, single = _by_path(EmbeddingStore(out)), _by_path(EmbeddingStore(root / "folder-store"))
    assert len(EmbeddingStore(out)) == 24 and merged.keys() == single.keys()  # no duplicates, no gaps
    for path, vec in merged.items():
        np.testing.assert_allclose(vec, single[path], atol=1e-5)


def test_not_a_tar_and_folders_with_pattern_characters(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "fake.tar").write_text("hello")
    assert main(["embed", "--checkpoint", str(ckpt), "--images", str(tmp_path / "fake.tar"), "--output",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'fake.tar'}: unreadable shard") and "\n" not in err
    write_folder(SyntheticWorld(), 3, tmp_path / "col{a}.tar")  # a folder, whatever its name looks like
    assert main(["embed", "--checkpoint", str(ckpt), "--images", str(tmp_path / "col{a}.tar"), "--output",
                 str(tmp_path / "s2")]) == 0
    assert len(EmbeddingStore(tmp_path / "s2")) == 3


def _png_bytes(colour):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (36, 36), colour).save(buf, "PNG")
    return buf.getvalue()


def test_parts_with_and_without_captions_are_searchable(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    members = {"s0.png": _png_bytes((255, 0, 0)), "s1.png": _png_bytes((0, 255, 0)), "s2.png": _png_bytes((0, 0, 255)),
               "s2.txt": b"a blue square", "s3.png": _png_bytes((9, 9, 9)), "s3.txt": b"a dark square"}
    shard = write_tar(tmp_path / "shard.tar", members)
    embed = ["embed", "--checkpoint", str(ckpt), "--images", str(shard), "--output", str(tmp_path / "st"),
             "--part-size", "2"]
    assert main(embed) == 0  # the first part has no captions, the second has
    assert main(["search", str(tmp_path / "st"), "red", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]) == 4
    assert main(embed) == 0 and "embedded 0 image(s)" in capsys.readouterr().out  # resuming reads it too
    from fastapi.testclient import TestClient

    from cliplab.infer.server import create_app

    assert TestClient(create_app(str(tmp_path / "st"))).get("/search", params={"q": "red", "k": 4}).status_code == 200
    csv = tmp_path / "d.csv"
    (tmp_path / "x.png").write_bytes(members["s0.png"])
    csv.write_text("filepath,title\nx.png,a red square\n")
    out = ["--output", str(tmp_path / "csv-store"), "--images", str(csv)]
    assert main(["embed", "--checkpoint", str(ckpt), *out, "--csv-caption-key", "title"]) == 0
    (tmp_path / "y.png").write_bytes(members["s1.png"])
    csv.write_text("filepath,title\nx.png,a red square\ny.png,a green square\n")
    assert main(["embed", "--checkpoint", str(ckpt), *out]) == 0  # a new image, without a caption: a new row
    assert main(["search", str(tmp_path / "csv-store"), "red"]) == 0
    assert _column(EmbeddingStore(tmp_path / "csv-store"), "caption") == ["a red square", None]


def test_unusable_items_are_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    folder = tmp_path / "imgs"
    write_folder(SyntheticWorld(), 3, folder)
    Image.new("RGB", (40, 40)).save(folder / "exif.jpg", exif=b"Exif\x00\x00garbage-exif-data")
    Image.new("RGB", (40, 40)).save(os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    first = sorted(p for p in folder.glob("*.png") if p.name.isascii())[0]
    (folder / "zz-link.png").symlink_to(first)
    args = ["embed", "--checkpoint", str(ckpt), "--images", str(folder), "--output", str(tmp_path / "s")]
    for _ in range(2):  # and again, resumed: neither run stops at them
        assert main(args) == 0
        out = capsys.readouterr()
        assert "skipped 2 unreadable or unusable" in out.out
        assert "caf\\xe9.png: file name is not valid UTF-8" in out.err
        assert f"zz-link.png: same file as {first}" in out.err
    store = EmbeddingStore(tmp_path / "s")
    exif = str(folder / "exif.jpg")
    assert len(store) == 4 and len(set(_column(store, "path"))) == 4 and exif in _column(store, "path")
    assert main(["search", str(tmp_path / "s"), "--image", exif, "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]["path"] == exif
    assert main(["search", str(tmp_path / "s"), "--image", str(first), "-k", "2", "--json"]) == 0
    paths = [r["path"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]]
    assert paths[0] == str(first) and paths[1] != str(first)  # found once, not twice


def test_an_empty_folder_or_a_single_image_makes_no_store(tmp_path, capsys):
    from PIL import Image

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "photo.png")
    for source, message in ((tmp_path / "empty", "no images found"), (tmp_path / "photo.png", "a single image")):
        assert main(["embed", "--checkpoint", str(ckpt), "--images", str(source), "--output", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {source}: {message}") and "\n" not in err
        assert not (tmp_path / "s").exists()
