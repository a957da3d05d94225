"""Contrastive loss memory and time: naive N×N vs tiled (cliplab.loss.chunked_clip_loss), forward + backward.

Each case runs in a fresh subprocess and reports its peak RSS above the inputs. Usage:
python benchmarks/bench_loss_memory.py [--sizes 4096 16384 65536] [--dim 512] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _case(kind: str, n: int, dim: int, chunk: int) -> dict:
    import torch.nn.functional as F

    from cliplab.loss import chunked_clip_loss, clip_loss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor(14.3, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    loss = clip_loss(img, txt, scale) if kind == "naive" else chunked_clip_loss(img, txt, scale, chunk_size=chunk)
    fwd = time.perf_counter() - t
    t = time.perf_counter()
    loss.backward()
    bwd = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "n": n, "forward_s": round(fwd, 3), "backward_s": round(bwd, 3),
            "extra_peak_gib": round((peak - base) / 2**20, 3), "loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--naive-max", type=int, default=16384, help="largest N for the naive loss (65k needs ~80 GB)")
    p.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(_case(args.case[0], int(args.case[1]), args.dim, int(args.case[2]))))
        return
    rows = []
    for n in args.sizes:
        for kind in ("naive", "tiled"):
            if kind == "naive" and n > args.naive_max:
                rows.append({"kind": kind, "n": n, "skipped": f"needs ~{5 * 4 * n * n / 2**30:.0f} GiB"})
                continue
            out = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--case", kind, str(n),
                                  str(args.chunk)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'loss':<7}{'N':>7}{'forward s':>11}{'backward s':>12}{'extra peak GiB':>16}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['kind']:<7}{r['n']:>7}   skipped: {r['skipped']}")
        else:
            print(f"{r['kind']:<7}{r['n']:>7}{r['forward_s']:>11.2f}{r['backward_s']:>12.2f}{r['extra_peak_gib']:>16.2f}")
    print(json.dumps({"bench": "loss_memory", "dim": args.dim, "chunk": args.chunk, "rows": rows}))


if __name__ == "__main__":
    main()
