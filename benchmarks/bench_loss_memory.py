"""Naive vs tiled CLIP loss: peak extra memory, forward and backward time, agreement at 4k.

Each case runs in a fresh subprocess; its peak extra memory is the RSS high-water mark (``ru_maxrss``) after
forward+backward minus the high-water mark once the inputs exist (inputs are built in place, so that baseline
is their real footprint). The extra includes the two input gradients (2·N·D floats).

    .venv/bin/python benchmarks/bench_loss_memory.py [--sizes 4096,16384,65536] [--dim 512] [--chunk 4096]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MIB = 1024 * 1024
# The naive loss keeps ~5 N×N fp32 matrices alive in backward (FACTS.md: 5.0 GB at 16k), i.e. ~80 GiB at 65k.
NAIVE_MAX_N = 16384


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _inputs(n: int, d: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):  # built in place: no transient copies that would raise the high-water mark
        x = torch.empty(n, d).normal_(generator=g)
        x.div_(x.norm(dim=1, keepdim=True))
        out.append(x.requires_grad_())
    return out[0], out[1], torch.tensor(100.0, requires_grad=True)  # the largest (cap) temperature


def _loss_fn(impl: str, chunk: int):
    from cliplab.loss import chunked_clip_loss, clip_loss

    if impl == "naive":
        return clip_loss
    return lambda i, t, s: chunked_clip_loss(i, t, s, chunk_size=chunk)


def run_case(impl: str, n: int, d: int, chunk: int, threads: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    fn = _loss_fn(impl, chunk)
    warm = _inputs(64, d)  # load kernels and thread pools before the baseline
    fn(*warm).backward()
    del warm
    img, txt, scale = _inputs(n, d)
    base = _maxrss_bytes()
    t0 = time.perf_counter()
    loss = fn(img, txt, scale)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return {"impl": impl, "n": n, "dim": d, "chunk": chunk if impl == "chunked" else None,
            "peak_extra_mib": round((_maxrss_bytes() - base) / MIB, 1), "forward_s": round(t1 - t0, 2),
            "backward_s": round(t2 - t1, 2), "loss": float(loss)}


def run_diff(n: int, d: int, chunk: int, threads: int) -> dict:
    """Max abs differences of loss and gradients between the tiled and the naive loss."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for impl in ("naive", "chunked"):
        img, txt, scale = _inputs(n, d)
        loss = _loss_fn(impl, chunk)(img, txt, scale)
        loss.backward()
        out[impl] = [loss.detach(), img.grad, txt.grad, scale.grad]
    names = ["loss", "grad_image", "grad_text", "grad_scale"]
    return {f"max_abs_diff_{k}": float((a - b).abs().max()) for k, a, b in zip(names, out["naive"], out["chunked"],
                                                                                strict=True)}


def _subprocess(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4096,16384,65536")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--case", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    p.add_argument("--diff", type=int, metavar="N", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    common = ["--dim", str(a.dim), "--chunk", str(a.chunk), "--threads", str(a.threads)]
    if a.case:
        print(json.dumps(run_case(a.case[0], int(a.case[1]), a.dim, a.chunk, a.threads)))
        return 0
    if a.diff:
        print(json.dumps(run_diff(a.diff, a.dim, a.chunk, a.threads)))
        return 0

    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        for impl in ("naive", "chunked"):
            if impl == "naive" and n > NAIVE_MAX_N:
                rows.append({"impl": impl, "n": n, "skipped": f"needs ~{5 * 4 * n * n / 2**30:.0f} GiB "
                             "(~5 N×N fp32 matrices; 24 GiB machine)"})
                continue
            rows.append({"impl": impl, "n": n, **_subprocess(["--case", impl, str(n), *common])})
            print(rows[-1], file=sys.stderr, flush=True)
    diff_n = min(int(s) for s in a.sizes.split(","))
    diff = {"n": diff_n, **_subprocess(["--diff", str(diff_n), *common])}

    print(f"\nCLIP loss, fp32, dim {a.dim}, chunk {a.chunk}, {a.threads} threads (peak extra = RSS high-water mark "
          "above the inputs; includes the 2 input gradients)")
    print(f"{'impl':8} {'N':>7} {'peak extra MiB':>15} {'forward s':>10} {'backward s':>11}")
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"{r['impl']:8} {r['n']:>7}  {r.get('skipped') or r['error']}")
        else:
            print(f"{r['impl']:8} {r['n']:>7} {r['peak_extra_mib']:>15.1f} {r['forward_s']:>10.2f} "
                  f"{r['backward_s']:>11.2f}")
    print(f"agreement at N={diff_n}: " + ", ".join(f"{k[13:]} {v:.2e}" for k, v in diff.items()
                                                        if k.startswith("max_abs")))
    print(json.dumps({"bench": "loss_memory", "dim": a.dim, "chunk": a.chunk, "threads": a.threads, "cases": rows,
                      "diff": diff}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
