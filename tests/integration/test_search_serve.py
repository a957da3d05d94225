"""Embed a generated collection, index it, search it from the CLI and over HTTP."""

import io
import json

import pytest
from PIL import Image

from cliplab.cli.main import main
from cliplab.data.synthetic import SyntheticWorld, write_folder
from cliplab.errors import CliplabError
from tests.integration.helpers import tiny_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    tiny_checkpoint(root / "ckpt")
    imgs = write_folder(SyntheticWorld(), 40, root / "imgs")
    (imgs / "broken.png").write_bytes(b"not a png")
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(imgs), "--output",
                 str(root / "store"), "--batch-size", "8", "--part-size", "16"]) == 0
    return root


def test_embed_is_resumable_and_skips_bad_images(collection, capsys):
    from cliplab.infer.store import EmbeddingStore

    store = EmbeddingStore(collection / "store")
    assert len(store) == 40 and len(store.parts()) == 3  # 16 + 16 + 8
    assert main(["embed", "--checkpoint", str(collection / "ckpt"), "--images", str(collection / "imgs"),
                 "--output", str(collection / "store")]) == 0
    out = capsys.readouterr()
    assert "embedded 0 image(s)" in out.out and "40 already in the store" in out.out and "skipped 1" in out.out
    assert "broken.png" in out.err
    assert len(EmbeddingStore(collection / "store")) == 40


def test_search_cli(collection, capsys):
    assert main(["index", str(collection / "store"), "--kind", "flat"]) == 0
    assert main(["search", str(collection / "store"), "a red circle", "-k", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res["results"]) == 5
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True)
    query = res["results"][0]["path"]
    assert main(["search", str(collection / "store"), "--image", query, "-k", "1", "--json"]) == 0
    top = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]
    assert top["path"] == query and top["score"] == pytest.approx(1.0, abs=1e-3)  # an image finds itself
    assert main(["search", str(collection / "store")]) == 2
    strip = collection / "strip.png"
    Image.new("RGB", (6_000_000, 1)).save(strip)  # its short side scaled up would be too large
    capsys.readouterr()
    assert main(["search", str(collection / "store"), "--image", str(strip)]) == 2
    assert f"error: {strip}: " in capsys.readouterr().err


@pytest.fixture(scope="module")
def client(collection):
    from fastapi.testclient import TestClient

    from cliplab.infer.server import ServeLimits, create_app

    return TestClient(create_app(str(collection / "store"), limits=ServeLimits(max_upload_bytes=200_000)))


def _png(colour=(200, 30, 30), size=(32, 32)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_http_api(client):
    assert client.get("/healthz").json()["items"] == 40
    r = client.get("/search", params={"q": "a blue star", "k": 3}).json()
    assert len(r["results"]) == 3 and r["results"][0]["url"].startswith("/images/")
    assert client.get(r["results"][0]["url"]).headers["content-type"] == "image/jpeg"
    r = client.post("/search", files={"image": ("q.png", _png(), "image/png")}, data={"k": "4"}).json()
    assert len(r["results"]) == 4
    r = client.post("/classify", files={"image": ("q.png", _png(), "image/png")}, data={"labels": "red, blue, green"})
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] != [] and abs(sum(p["score"] for p in preds) - 1) < 1e-4
    assert preds == sorted(preds, key=lambda p: -p["score"])
    r = client.post("/embed", json={"texts": ["a", "b"]}).json()
    assert len(r["embeddings"]) == 2 and len(r["embeddings"][0]) == 128
    r = client.post("/embed", files=[("images", ("a.png", _png(), "image/png"))]).json()
    assert r["kind"] == "image" and len(r["embeddings"]) == 1
    assert "openapi" in client.get("/openapi.json").json()
    assert "<html" in client.get("/").text


@pytest.mark.parametrize("method,url,kwargs,status", [
    ("get", "/search", {"params": {"q": "x", "k": 0}}, 422),
    ("get", "/search", {"params": {"q": "x", "k": 10_000}}, 422),
    ("get", "/search", {"params": {"q": "x" * 600}}, 422),
    ("get", "/search", {}, 422),
    ("get", "/images/999", {}, 404),
    ("get", "/images/-1", {}, 404),
    ("get", "/images/..%2F..%2Fetc%2Fpasswd", {}, 404),
    ("get", "/../../etc/passwd", {}, 404),
    ("post", "/search", {"files": {"image": ("x.png", _png(), "image/png")}, "data": {"k": "0"}}, 422),
    ("post", "/search", {"files": {"image": ("x.png", _png(), "image/png")}, "data": {"k": "10000"}}, 422),
    ("post", "/search", {"files": {"image": ("x.png", b"not an image", "image/png")}}, 400),
    ("post", "/search", {"files": {"image": ("x.png", b"", "image/png")}}, 400),
    ("post", "/classify", {"files": {"image": ("x.png", _png(), "image/png")}, "data": {"labels": " , "}}, 422),
    ("post", "/classify", {"files": {"image": ("x.png", _png(), "image/png")},
                           "data": {"labels": ",".join(str(i) for i in range(500))}}, 422),
    ("post", "/embed", {"json": {"texts": "not a list"}}, 422),
    ("post", "/embed", {"json": {"texts": ["a cat"] * 257}}, 422),  # ServeLimits.max_texts + 1
    ("post", "/embed", {"json": {"texts": ["a" * 501]}}, 422),  # ServeLimits.max_query_chars + 1
    ("post", "/embed", {"content": b"{oops", "headers": {"content-type": "application/json"}}, 400),
    ("post", "/embed", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415),
    ("post", "/search", {"files": {"image": ("big.png", b"0" * 300_000, "image/png")}}, 413),
    ("post", "/classify", {"files": {"image": ("x.png", _png(), "image/png")},
                           "data": {"labels": " ".join(["red"] * 40) + ",cat"}}, 422),  # longer than the context
    ("post", "/classify", {"files": {"image": ("x.png", _png(), "image/png")},
                           "data": {"labels": "red", "template": "{} and {}"}}, 422),
    ("post", "/embed", {"content": b"[" * 100_000 + b"]" * 100_000,
                        "headers": {"content-type": "application/json"}}, 400),
    ("post", "/embed", {"content": iter([b'{"texts": ["' + b"a" * 100_000] * 3 + [b'"]}']),
                        "headers": {"content-type": "application/json"}}, 413),  # chunked: no Content-Length
])
def test_bad_requests_get_json_4xx(client, method, url, kwargs, status):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}


def test_requests_at_the_limits_are_served(client):
    """The limits themselves are allowed: k = max_k, max_texts texts, texts of max_query_chars characters."""
    from cliplab.infer.server import ServeLimits

    limits = ServeLimits()
    assert (limits.max_k, limits.max_texts, limits.max_query_chars) == (100, 256, 500)  # the cases above
    r = client.get("/search", params={"q": "x", "k": 100})
    assert r.status_code == 200 and len(r.json()["results"]) == 40  # every item of the store
    r = client.post("/search", files={"image": ("q.png", _png(), "image/png")}, data={"k": "100"})
    assert r.status_code == 200 and len(r.json()["results"]) == 40
    r = client.post("/embed", json={"texts": ["a cat"] * 255 + ["a" * 500]})
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 256


def test_thumbnails_of_transparent_and_palette_images(tmp_path, collection):
    from fastapi.testclient import TestClient

    from cliplab.infer.server import create_app

    folder = tmp_path / "modes"
    folder.mkdir()
    Image.new("RGBA", (20, 20), (255, 0, 0, 90)).save(folder / "rgba.png")
    Image.new("LA", (20, 20), (128, 50)).save(folder / "la.png")
    Image.new("RGB", (20, 20), (0, 90, 200)).convert("P").save(folder / "p.png")
    assert main(["embed", "--checkpoint", str(collection / "ckpt"), "--images", str(folder), "--output",
                 str(tmp_path / "store")]) == 0
    client = TestClient(create_app(str(tmp_path / "store")))
    for i in range(3):
        r = client.get(f"/images/{i}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


def test_store_names_its_model_absolutely_and_checks_its_size(tmp_path, collection, capsys, monkeypatch):
    from cliplab.infer.store import EmbeddingStore

    monkeypatch.chdir(collection)
    assert main(["embed", "--checkpoint", "ckpt", "--images", "imgs", "--output", str(tmp_path / "s"),
                 "--part-size", "16"]) == 0
    assert EmbeddingStore(tmp_path / "s").model_id == str((collection / "ckpt").resolve())
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(tmp_path / "s"), "a red circle", "-k", "2"]) == 0  # from another folder
    other = tiny_checkpoint(tmp_path / "wide", embed_dim=64)
    capsys.readouterr()
    assert main(["search", str(tmp_path / "s"), "red", "--checkpoint", str(other)]) == 2
    assert "holds 128-d vectors but" in capsys.readouterr().err


def test_resume_keeps_every_caption_row(tmp_path, collection):
    from cliplab.infer.store import EmbeddingStore

    rows = [f"{p.name},caption {j} of {p.stem}" for p in sorted((collection / "imgs").glob("*.png"))[:6]
            for j in range(3)]
    head = "filepath,title\n"
    (collection / "imgs" / "part.csv").write_text(head + "\n".join(rows[:7]) + "\n")  # a run cut short
    (collection / "imgs" / "caps.csv").write_text(head + "\n".join(rows + rows[:1]) + "\n")  # + a repeated row
    args = ["embed", "--checkpoint", str(collection / "ckpt"), "--csv-caption-key", "title", "--output",
            str(tmp_path / "s"), "--part-size", "4"]
    assert main([*args, "--images", str(collection / "imgs" / "part.csv")]) == 0
    assert main([*args, "--images", str(collection / "imgs" / "caps.csv")]) == 0
    store = EmbeddingStore(tmp_path / "s")
    assert len(store) == 19 and len(set(store.metadata().column("caption").to_pylist())) == 18


def test_text_store_has_no_thumbnails(tmp_path, collection, capsys):
    from fastapi.testclient import TestClient

    from cliplab.infer.server import create_app

    (tmp_path / "t.txt").write_text("a red circle\na blue star\n")
    assert main(["embed", "--checkpoint", str(collection / "ckpt"), "--images", str(collection / "imgs"),
                 "--output", str(tmp_path / "store"), "--texts", str(tmp_path / "t.txt")]) == 0
    capsys.readouterr()
    query = str(collection / "imgs" / sorted(p.name for p in (collection / "imgs").glob("*.png"))[0])
    assert main(["search", str(tmp_path / "store" / "texts"), "--image", query, "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert {line.split(None, 2)[2] for line in lines} == {"a red circle", "a blue star"}  # captions, not None
    client = TestClient(create_app(str(tmp_path / "store" / "texts")))
    hits = client.get("/search", params={"q": "a red circle", "k": 2}).json()["results"]
    assert len(hits) == 2 and all("url" not in h for h in hits)
    r = client.get("/images/0")
    assert r.status_code == 404 and "is a text" in r.json()["error"]


def test_inputs_are_checked_before_a_store_is_made(tmp_path, collection, capsys):
    base = ["embed", "--checkpoint", str(collection / "ckpt"), "--output", str(tmp_path / "store")]
    assert main([*base, "--images", str(tmp_path / "nothing-here")]) == 2
    assert main([*base, "--images", str(collection / "imgs"), "--texts", str(tmp_path / "none.txt")]) == 2
    assert "none.txt" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # no half-made store left to block a retry


def test_chunked_multipart_upload_is_bounded(client):
    """Four files, each under the per-file limit (200 kB here), 400 kB in all, sent without Content-Length."""
    part = (b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + b"0" * 100_000 + b"\r\n")
    chunks = iter([part] * 4 + [b"--b--\r\n"])
    r = client.post("/embed", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and set(r.json()) == {"error"}


def test_store_keeps_to_the_weights_it_was_made_with(tmp_path, collection, capsys):
    """A run folder is pinned to its latest checkpoint at embed time; other weights of the same size are refused."""
    run = tmp_path / "run"
    args = ["train", "--model", "ViT-Tiny-32px", "--data-format", "synthetic", "--batch-size", "8", "--workers",
            "0", "--output", str(run)]
    assert main([*args, "--steps", "2"]) == 0
    embed = ["embed", "--checkpoint", str(run), "--images", str(collection / "imgs"), "--output",
             str(tmp_path / "s")]
    assert main(embed) == 0
    assert main([*args, "--steps", "4", "--resume", "latest"]) == 0  # the run goes on: its latest moves
    capsys.readouterr()
    assert main(["search", str(tmp_path / "s"), "a red circle", "-k", "2"]) == 0  # still the step-2 weights
    assert main(["search", str(tmp_path / "s"), "red", "--checkpoint", str(run)]) == 2
    assert "other weights than those of" in capsys.readouterr().err
    assert main(embed) == 2  # resuming the embedding with the moved run would mix two models
    assert "store was built with" in capsys.readouterr().err


def test_index_of_a_rebuilt_store_is_not_reused(tmp_path, collection):
    import shutil

    from cliplab.errors import CliplabWarning
    from cliplab.infer.index import load_or_build_index
    from cliplab.infer.store import EmbeddingStore

    embed = ["embed", "--images", str(collection / "imgs"), "--output", str(tmp_path / "s"), "--part-size", "16"]
    assert main([*embed, "--checkpoint", str(collection / "ckpt")]) == 0
    first = load_or_build_index(EmbeddingStore(tmp_path / "s"), "flat")
    for f in (tmp_path / "s").iterdir():  # a new store in the same folder, index files left behind
        if not f.name.startswith("index"):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    assert main([*embed, "--checkpoint", str(tiny_checkpoint(tmp_path / "other"))]) == 0
    store = EmbeddingStore(tmp_path / "s")
    assert store.fingerprint() != first.info["store_fingerprint"]
    with pytest.warns(CliplabWarning, match="the store changed since the index was built; rebuilding its flat index"):
        again = load_or_build_index(store)
    assert again.info["store_fingerprint"] == store.fingerprint()


def test_loopback_server_refuses_other_host_names(collection):
    from fastapi.testclient import TestClient

    from cliplab.infer.server import create_app

    client = TestClient(create_app(str(collection / "store"), allowed_hosts=["127.0.0.1", "localhost"]),
                        base_url="http://localhost:8000")
    assert client.get("/healthz").status_code == 200
    assert client.get("/search", params={"q": "red"}, headers={"host": "evil.example.com"}).status_code == 400
    r = client.post("/classify", files={"image": ("q.png", _png(), "image/png")}, data={"labels": '["red", 1, null]'})
    assert r.status_code == 422 and "strings" in r.json()["error"]


def test_parts_hold_part_size_vectors_whatever_the_batch(tmp_path, collection):
    from cliplab.infer.store import EmbeddingStore

    assert main(["embed", "--checkpoint", str(collection / "ckpt"), "--images", str(collection / "imgs"),
                 "--output", str(tmp_path / "s"), "--batch-size", "32", "--part-size", "16"]) == 0
    assert [p["count"] for p in EmbeddingStore(tmp_path / "s").parts()] == [16, 16, 8]  # 40 good images


def test_serve_refuses_a_port_out_of_range(capsys):
    assert main(["serve", "nowhere", "--port", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --port 99999: a port is 0-65535"]


def test_embed_refuses_fp16_on_cpu_before_creating_a_store(collection, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["embed", "--checkpoint", str(collection / "ckpt"), "--images", str(collection / "imgs"),
                 "--output", str(out), "--precision", "fp16"]) == 2
    assert "fp16" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("order", [["-k", "3", "a red circle"], ["a red circle", "-k", "3"],
                                   ["--json", "-k", "3", "a red circle"]])
def test_search_options_before_or_after_the_query(collection, capsys, order):
    assert main(["search", str(collection / "store"), *order, "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["query"] == "a red circle" and len(res["results"]) == 3
    with pytest.raises(SystemExit):  # still one query at most
        main(["search", str(collection / "store"), "-k", "3", "a", "b"])
    assert "unrecognized arguments: b" in capsys.readouterr().err


def test_a_store_of_a_pruned_training_checkpoint(tmp_path, collection, capsys):
    """A store embedded from a run folder names the run's checkpoint of the time; training prunes it later."""
    import shutil

    from cliplab.infer.server import create_app

    ckpts = tmp_path / "run" / "checkpoints"
    shutil.copytree(collection / "ckpt", ckpts / "step-10")
    (ckpts / "latest").write_text("step-10\n")
    assert main(["embed", "--checkpoint", str(tmp_path / "run"), "--images", str(collection / "imgs"), "--output",
                 str(tmp_path / "s")]) == 0
    shutil.copytree(ckpts / "step-10", ckpts / "step-20")
    (ckpts / "latest").write_text("step-20\n")
    shutil.rmtree(ckpts / "step-10")
    capsys.readouterr()
    assert main(["search", str(tmp_path / "s"), "a red circle"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{ckpts / 'step-10'}, no longer exists (pruned by later training?)" in err
    assert "--checkpoint" in err and "re-embed" in err
    with pytest.raises(CliplabError, match="no longer exists"):
        create_app(str(tmp_path / "s"))
    assert main(["search", str(tmp_path / "s"), "a red circle", "--checkpoint", str(ckpts / "step-20")]) == 0


def _jpeg_with_bad_exif():
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, "JPEG", exif=b"Exif\x00\x00garbage-exif-data")
    return buf.getvalue()


def test_uploads_with_malformed_exif_are_used(client):
    files = {"image": ("exif.jpg", _jpeg_with_bad_exif(), "image/jpeg")}
    r = client.post("/search", files=files, data={"k": "2"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    r = client.post("/classify", files=files, data={"labels": "red, blue"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    r = client.post("/embed", files=[("images", ("exif.jpg", _jpeg_with_bad_exif(), "image/jpeg"))])
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1


def test_search_on_a_store_that_cannot_take_the_index_still_answers(tmp_path, collection, monkeypatch, capsys):
    from cliplab.infer.index import SearchIndex

    store = tmp_path / "s"
    assert main(["embed", "--images", str(collection / "imgs"), "--output", str(store), "--checkpoint",
                 str(collection / "ckpt")]) == 0

    def read_only(self, folder):
        raise OSError(30, "Read-only file system", str(folder / "index.json"))

    monkeypatch.setattr(SearchIndex, "save", read_only)
    capsys.readouterr()
    assert main(["search", str(store), "a red square", "-k", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "cannot save the index (Read-only file system); searching with one built in memory" in captured.err
    assert len(json.loads(captured.out.strip().splitlines()[-1])) == 2
