"""Load test of `cliplab serve` on loopback: C concurrent clients × R text searches each (bounded).

Builds a small store with a random ViT-Tiny model, starts the real uvicorn server in this process, and
reports p50/p99 latency, throughput and errors. Usage: python benchmarks/bench_serve.py [--clients 8]
[--requests 200]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    import httpx
    import uvicorn

    from cliplab.checkpoint import save_checkpoint
    from cliplab.cli.main import main as cli
    from cliplab.config import CLIPConfig, load_arch
    from cliplab.data.synthetic import SyntheticWorld, write_folder
    from cliplab.infer.server import create_app
    from cliplab.model.build import create_model

    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--items", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
        save_checkpoint(create_model(cfg.model), cfg, root / "ckpt")
        write_folder(SyntheticWorld(), args.items, root / "imgs")
        cli(["embed", "--checkpoint", str(root / "ckpt"), "--images", str(root / "imgs"), "--output",
             str(root / "store")])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(str(root / "store")), host="127.0.0.1", port=port,
                                               log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)

        def client(i: int) -> tuple[list[float], int]:
            lat, errors = [], 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                for j in range(args.requests):
                    t = time.perf_counter()
                    r = c.get("/search", params={"q": f"a red shape number {i} {j}", "k": 10})
                    lat.append(time.perf_counter() - t)
                    errors += r.status_code != 200
            return lat, errors

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        server.should_exit = True
    lat = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    p50, p99 = statistics.median(lat) * 1000, lat[int(0.99 * len(lat)) - 1] * 1000
    print(f"{'clients':>8}{'requests':>10}{'items':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'errors':>8}")
    print(f"{args.clients:>8}{args.clients * args.requests:>10}{args.items:>8}{p50:>9.1f}{p99:>9.1f}"
          f"{len(lat) / wall:>8.0f}{errors:>8}")
    print(json.dumps({"bench": "serve", "clients": args.clients, "requests_per_client": args.requests,
                      "items": args.items, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                      "requests_per_s": round(len(lat) / wall, 1), "errors": errors}))


if __name__ == "__main__":
    main()
