"""The HTTP service's edges: versioned thumbnails, empty queries, HEAD, and JSON for every refusal."""

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests.integration.helpers import tiny_checkpoint

from cliplab.cli.main import main
from cliplab.infer.server import create_app

LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores of one image each, of other colours, by the same model: item 0 in both."""
    root = tmp_path_factory.mktemp("serve")
    tiny_checkpoint(root / "ckpt")
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (root / name).mkdir()
        Image.new("RGB", (40, 40), colour).save(root / name / "x.png")
        assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / name), "--output",
                     str(root / f"store-{name}")]) == 0
    return root


def _client(stores, name="a", hosts=None):
    return TestClient(create_app(str(stores / f"store-{name}"), allowed_hosts=hosts),
                      base_url="http://127.0.0.1:8000")


def test_a_thumbnail_url_names_its_store_version(stores):
    """Ids are positions: item 0 of another store on the same port must not be the browser's cached one."""
    urls, bodies = [], []
    for name in "ab":
        client = _client(stores, name)
        url = client.get("/search", params={"q": "x", "k": 1}).json()["results"][0]["url"]
        r = client.get(url)
        assert r.status_code == 200 and r.headers["cache-control"] == "max-age=3600" and r.headers["etag"]
        assert client.get(url, headers={"if-none-match": r.headers["etag"]}).status_code == 304
        unversioned = client.get("/images/0")  # kept, but revalidated
        assert unversioned.headers["cache-control"] == "no-cache" and unversioned.headers["etag"] == r.headers["etag"]
        urls.append(url)
        bodies.append(r.content)
    assert urls[0] != urls[1] and urls[0].startswith("/images/0?v=") and bodies[0] != bodies[1]
    stale = _client(stores, "b").get(urls[0])
    assert stale.status_code == 404 and "another version of the store" in stale.json()["error"]


@pytest.mark.parametrize("q", ["", "   ", "\t\n"])
def test_an_empty_query_is_refused(stores, capsys, q):
    r = _client(stores).get("/search", params={"q": q, "k": 1})
    assert r.status_code == 422 and r.json() == {"error": "q: the query is empty"}
    assert main(["search", str(stores / "store-a"), q, "-k", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: the text query is empty"


def test_refusals_are_json_and_head_is_answered(stores):
    client = _client(stores, hosts=LOOPBACK)
    r = client.post("/embed", content=b"{}", headers={"content-type": "application/json", "content-length": "abc"})
    assert r.status_code == 400 and r.json() == {"error": "Content-Length is not a number"}
    r = client.get("/healthz", headers={"host": "evil.example.com"})
    assert r.status_code == 400 and "evil.example.com" in r.json()["error"]
    assert client.get("/healthz", headers={"host": "[::1]:8000"}).status_code == 200
    assert client.get("/healthz", headers={"host": "localhost"}).status_code == 200
    anyone = _client(stores, hosts=["*"])  # as Starlette's TrustedHostMiddleware takes it
    assert anyone.get("/healthz", headers={"host": "evil.example.com"}).status_code == 200
    page, thumb = client.head("/"), client.head("/images/0")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_a_label_that_is_not_unicode_is_refused_by_its_position(stores):
    """JSON's "\\ud800" decodes to a lone surrogate, which the answer could not echo in UTF-8."""
    r = _client(stores).post("/classify", files={"image": ("a.png", _png_bytes(), "image/png")},
                             data={"labels": '["cat", "\\ud800"]'})
    assert r.status_code == 422 and r.json() == {"error": "labels: label 2 is not valid Unicode (a lone surrogate)"}


def test_an_unexpected_error_is_a_json_500(stores, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("cliplab.api.classify", broken)
    client = TestClient(create_app(str(stores / "store-a")), raise_server_exceptions=False)
    r = client.post("/classify", files={"image": ("a.png", _png_bytes(), "image/png")}, data={"labels": "cat"})
    assert r.status_code == 500 and r.json() == {
        "error": "internal server error (RuntimeError); the server's log has the details"}


def test_thumbnails_of_images_as_large_as_embed_takes(stores, tmp_path):
    """Indexed images are read within embed's limit (Pillow's 179 MP), not the uploads' 64 MP; a file replaced
    by one over it is said to be too large. A JPEG (drafted at a reduced scale) keeps its EXIF rotation."""
    import io

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("1", (8200, 8200), 1).save(folder / "big.png")  # 67 MP, 25 kB
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90°
    Image.new("RGB", (60, 20), (0, 90, 200)).save(folder / "turned.jpg", exif=exif.tobytes())
    assert main(["embed", "--checkpoint", str(stores / "ckpt"), "--images", str(folder), "--output",
                 str(tmp_path / "store")]) == 0
    client = TestClient(create_app(str(tmp_path / "store")))
    urls = {hit["path"].rsplit("/", 1)[1]: hit["url"] for hit in client.get("/search", params={"q": "x"}).json()[
        "results"]}
    sizes = {}
    for name, url in urls.items():
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
        sizes[name] = Image.open(io.BytesIO(r.content)).size
    assert sizes == {"big.png": (256, 256), "turned.jpg": (20, 60)}
    Image.new("1", (13400, 13400), 1).save(folder / "big.png")  # 180 MP
    r = client.get(urls["big.png"])
    item = urls["big.png"].split("?")[0].rsplit("/", 1)[1]
    assert r.status_code == 404 and r.json() == {
        "error": f"item {item}: image too large to show (over 178956970 pixels)"}
