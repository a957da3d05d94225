"""Search latency and recall: flat (exact) vs IVF vs HNSW over N random 512-d vectors.

Data: a Gaussian mixture on the unit sphere (1,000 clusters), like real CLIP embeddings, clustered.
Single-query latency p50/p99 at k=10, recall@10 against exact search, build time, index size on disk,
and the float16 store footprint. Usage: python benchmarks/bench_search.py [--n 1000000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np


def main() -> None:
    import faiss

    from cliplab.infer.index import build_index

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    args = p.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim)).astype(np.float32)
    x = np.empty((args.n, args.dim), np.float32)
    for s in range(0, args.n, 100_000):  # chunked to keep peak memory at ~2x the data
        e = min(args.n, s + 100_000)
        x[s:e] = centres[rng.integers(0, 1000, e - s)] + 0.6 * rng.normal(size=(e - s, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(args.n, args.queries, replace=False)] + 0.05 * rng.normal(size=(args.queries, args.dim))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    _, truth = exact.search(q, 10)
    rows = []
    for kind in args.kinds:
        idx = build_index(x, kind)
        lat, hits = [], 0.0
        for i in range(args.queries):
            t = time.perf_counter()
            _, ids = idx.search(q[i : i + 1], 10)
            lat.append(time.perf_counter() - t)
            hits += len(set(ids[0]) & set(truth[i])) / 10
        with tempfile.TemporaryDirectory() as d:
            idx.save(d)
            disk = os.path.getsize(os.path.join(d, "index.faiss"))
        lat_ms = np.array(lat) * 1000
        params = {k: idx.info[k] for k in ("nlist", "nprobe", "M", "efSearch") if k in idx.info}
        rows.append({"kind": kind, "build_s": idx.info["build_seconds"],
                     "p50_ms": round(float(np.median(lat_ms)), 3), "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
                     "recall_at_10": round(hits / args.queries, 4), "index_disk_mb": round(disk / 2**20, 1), **params})
        del idx
    store_mb = args.n * args.dim * 2 / 2**20
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"N={args.n} dim={args.dim}; float16 store {store_mb:.0f} MB; process peak RSS {peak_gb:.1f} GB")
    print(f"{'kind':<6}{'build s':>9}{'p50 ms':>9}{'p99 ms':>9}{'recall@10':>11}{'index MB':>10}")
    for r in rows:
        print(f"{r['kind']:<6}{r['build_s']:>9.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['recall_at_10']:>11.3f}"
              f"{r['index_disk_mb']:>10.0f}")
    print(json.dumps({"bench": "search", "n": args.n, "dim": args.dim, "store_fp16_mb": round(store_mb),
                      "peak_rss_gb": round(peak_gb, 2), "rows": rows}))


if __name__ == "__main__":
    main()
