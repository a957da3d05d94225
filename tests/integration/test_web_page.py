"""The web page driven in headless Chromium (Debian's, through Playwright), and a bounded load test."""

import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from cliplab.cli.main import main
from cliplab.data.synthetic import SyntheticWorld, write_folder
from tests.integration.helpers import tiny_checkpoint

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from cliplab.infer.server import create_app

    root = tmp_path_factory.mktemp("web")
    tiny_checkpoint(root / "ckpt")
    write_folder(SyntheticWorld(), 30, root / "imgs")
    assert main(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--output",
                 str(root / "store")]) == 0
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(str(root / "store")), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_page_search_and_classify(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    url, root = server
    query_image = root / "query.png"
    Image.new("RGB", (40, 40), (220, 30, 30)).save(query_image)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.fill("#q", "a red circle")
        page.click("#text-form button")
        page.wait_for_selector("#results .hit", timeout=20_000)
        hits = page.locator("#results .hit")
        assert hits.count() >= 10
        assert page.locator("#results .hit img").first.evaluate("img => img.complete && img.naturalWidth > 0")
        assert "?v=" in page.locator("#results .hit img").first.get_attribute("src")  # the store's version
        page.set_input_files("#cls-file", str(query_image))
        page.fill("#labels", "red, blue, green")
        page.click("#cls-btn")
        page.wait_for_selector("#bars .bar", timeout=20_000)
        assert page.locator("#bars .bar").count() == 3
        # file names are inert text, also inside attributes (a quote must not end alt="...")
        escaped = page.evaluate("""esc('x" onerror="alert(1)" <b>&')""")
        assert escaped == "x&quot; onerror=&quot;alert(1)&quot; &lt;b&gt;&amp;"
        shot = tmp_path / "page.png"  # the screenshot the issue asks for (kept in pytest's tmp folder)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000


def test_head_of_the_page_and_a_thumbnail(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as c:
        thumb = c.get("/search", params={"q": "a red circle", "k": 1}).json()["results"][0]["url"]
        for path, kind in (("/", "text/html"), (thumb, "image/jpeg")):
            r = c.head(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind) and r.content == b""


def test_load_on_loopback(server):
    url, _ = server
    latencies, errors = [], 0

    def client(i: int) -> list[float]:
        out = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for j in range(25):
                t = time.perf_counter()
                r = c.get("/search", params={"q": f"a red shape {i} {j}", "k": 5})
                out.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise AssertionError(r.text)
        return out

    with ThreadPoolExecutor(8) as pool:
        for result in pool.map(client, range(8)):
            latencies += result
    assert len(latencies) == 200 and errors == 0
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[int(0.99 * len(latencies)) - 1]
    print(f"8 clients x 25 requests: p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms, 0 errors")
