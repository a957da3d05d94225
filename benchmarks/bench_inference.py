"""encode_image / encode_text throughput: cliplab vs transformers.CLIPModel on the same random weights.

ViT-B/32, batch 32, fp32 and bf16 autocast, interleaved call by call in one process (median).
Prints a table and one JSON line.
Speed-up: median over rounds of HF's time over cliplab's (adjacent calls); rates: median per call.
Usage: python benchmarks/bench_inference.py [--repeats 15] [--batch 32] [--tower image|text|both] [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def _race(fns: dict, repeats: int) -> dict:
    """Seconds per call of each function over ``repeats`` rounds; in each round every function runs once, in
    turn, so a slow spell of the machine hits all contestants of that round alike. The order flips every
    round: a call right after a same-shaped one reuses its freed buffers, which favours the second."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in (fns.items() if i % 2 == 0 else reversed(fns.items())):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def vit_gemm_products(cfg, embed_dim: int, batch: int):
    """A function that runs the image tower's matrix products alone, at their own shapes: the patch embedding as
    one GEMM, per block the qkv, attention (scores and weighted sum), output and two MLP products, and the
    projection. The last block needs keys and values of every token but the rest only for the class token,
    whose row alone is pooled; that is the least work of an exact forward. No exact implementation can run
    faster than this, so the peer's time over this one bounds the speed-up any implementation could show over
    the peer on this machine."""
    d, t, g = cfg.width, cfg.grid_size**2 + 1, cfg.grid_size
    hd, h = d // cfg.heads, cfg.heads
    m, hidden = batch * t, int(d * cfg.mlp_ratio)
    x, pix = torch.randn(m, d), torch.randn(batch * g * g, 3 * cfg.patch_size**2)
    mid = torch.randn(m, hidden)
    q, k = torch.randn(batch * h, t, hd), torch.randn(batch * h, hd, t)
    scores = torch.randn(batch * h, t, t)
    shapes = {"patch": (3 * cfg.patch_size**2, d), "qkv": (d, 3 * d), "out": (d, d), "fc1": (d, hidden),
              "fc2": (hidden, d), "proj": (d, embed_dim)}
    w = {name: torch.randn(o, i) for name, (i, o) in shapes.items()}
    linear = torch.nn.functional.linear

    def products() -> None:
        linear(pix, w["patch"])  # (B*g*g, 3*p*p) -> (B*g*g, d)
        for _ in range(cfg.layers - 1):
            linear(x, w["qkv"])  # (B*T, d) -> (B*T, 3d)
            torch.bmm(q, k)  # (B*h, T, hd) @ (B*h, hd, T): attention scores
            torch.bmm(scores, q)  # (B*h, T, T) @ (B*h, T, hd): weighted values
            linear(x, w["out"])
            linear(x, w["fc1"])  # (B*T, d) -> (B*T, hidden)
            linear(mid, w["fc2"])  # (B*T, hidden) -> (B*T, d)
        linear(x, w["qkv"][d:])  # last block: keys and values of every token, (B*T, d) -> (B*T, 2d)
        linear(x[:batch], w["qkv"][:d])  # the class token's query, (B, d)
        torch.bmm(q[:, :1], k)  # (B*h, 1, hd) @ (B*h, hd, T)
        torch.bmm(scores[:, :1], q)  # (B*h, 1, T) @ (B*h, T, hd)
        linear(x[:batch], w["out"])
        linear(x[:batch], w["fc1"])  # (B, d) -> (B, hidden)
        linear(mid[:batch], w["fc2"])
        linear(x[:batch], w["proj"])  # class tokens -> (B, embed)

    return products


def _speedup(ours: list[float], peer: list[float]) -> float:
    """Median over rounds of the peer's time over ours (paired, so robust to the machine's speed drifting)."""
    return statistics.median(p / o for o, p in zip(ours, peer, strict=True))


def main() -> None:
    import transformers

    from cliplab.api import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tower", choices=("image", "text", "both"), default="both")
    p.add_argument("--precisions", default="auto",
                   help="comma-separated fp32,bf16; auto: bf16 only where the CPU has it natively (elsewhere it is "
                        "emulated and many times slower than fp32 for both libraries)")
    p.add_argument("--compile", action="store_true",
                   help="also time both image towers under torch.compile with freezing (cliplab's "
                        "compile_for_inference, HF's get_image_features the same way); compilation is excluded")
    args = p.parse_args()
    from cliplab.precision import cpu_has_bf16

    precisions = (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]) if args.precisions == "auto" \
        else args.precisions.split(",")
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, _, _ = load_model(d)
    n = args.batch
    if args.compile:
        import copy

        compiled = copy.deepcopy(ours).compile_for_inference()
        import torch._inductor.config as inductor_config

        hf_compiled = torch.compile(hf.get_image_features, dynamic=False)

        def hf_image_compiled(**kwargs):
            with inductor_config.patch(freezing=True):  # the same compilation as compile_for_inference
                return hf_compiled(**kwargs)
    images = torch.randn(n, 3, 224, 224)
    ids = torch.zeros(n, 77, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for i in range(n):  # caption-like lengths: 8-24 tokens
        k = 8 + i % 17
        ids[i, 0], ids[i, 1:k] = 49406, torch.randint(1, 49000, (k - 1,), generator=g)
        ids[i, k] = 49407
    rows = []
    with torch.no_grad():
        for precision in precisions:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            with ctx:
                fns = {}
                if args.tower in ("image", "both"):
                    fns["image_cliplab"] = lambda: ours.encode_image(images)
                    fns["image_hf"] = lambda: hf.get_image_features(pixel_values=images)
                    if precision == "fp32":  # the floor: the same matrix products and nothing else
                        fns["image_gemms"] = vit_gemm_products(ours.cfg.vision, ours.cfg.embed_dim, n)
                if args.compile and args.tower in ("image", "both"):
                    fns["image_cliplab_compiled"] = lambda: compiled.encode_image(images)
                    fns["image_hf_compiled"] = lambda: hf_image_compiled(pixel_values=images)
                if args.tower in ("text", "both"):
                    fns["text_cliplab"] = lambda: ours.encode_text(ids)
                    fns["text_hf"] = lambda: hf.get_text_features(input_ids=ids)
                times = _race(fns, args.repeats)
            r = {"precision": precision, **{name: n / statistics.median(ts) for name, ts in times.items()}}
            for tower in ("image", "text"):
                if f"{tower}_cliplab" in times:
                    r[f"{tower}_speedup"] = _speedup(times[f"{tower}_cliplab"], times[f"{tower}_hf"])
            if "image_cliplab_compiled" in times:
                r["compiled_vs_hf_eager"] = _speedup(times["image_cliplab_compiled"], times["image_hf"])
                r["compiled_vs_hf_compiled"] = _speedup(times["image_cliplab_compiled"], times["image_hf_compiled"])
            if "image_gemms" in times:  # paired per round, like the speed-up
                r["image_cliplab_share"] = 1 / _speedup(times["image_gemms"], times["image_cliplab"])
                r["image_hf_share"] = 1 / _speedup(times["image_gemms"], times["image_hf"])
                r["image_speedup_ceiling"] = _speedup(times["image_gemms"], times["image_hf"])
            rows.append(r)
    print(f"{'precision':<10}{'tower':<7}{'cliplab':>11}{'HF':>11}{'speed-up':>10}")
    for r in rows:
        for tower in ("image", "text"):
            if f"{tower}_speedup" in r:
                print(f"{r['precision']:<10}{tower:<7}{r[f'{tower}_cliplab']:>9.1f}/s{r[f'{tower}_hf']:>9.1f}/s"
                      f"{r[f'{tower}_speedup']:>9.2f}x")
        if "image_gemms" in r:
            print(f"{r['precision']:<10}{'image: its matrix products alone':<33}{r['image_gemms']:.1f}/s; "
                  f"cliplab runs at {r['image_cliplab_share']:.0%} of that, HF at {r['image_hf_share']:.0%}: "
                  f"no exact implementation can beat HF by more than {r['image_speedup_ceiling']:.2f}x here")
        if "compiled_vs_hf_eager" in r:
            print(f"{r['precision']:<10}{'image, both compiled':<21}{r['image_cliplab_compiled']:.1f}/s vs "
                  f"{r['image_hf_compiled']:.1f}/s: {r['compiled_vs_hf_compiled']:.2f}x; compiled cliplab vs "
                  f"HF eager: {r['compiled_vs_hf_eager']:.2f}x")
    print(json.dumps({"bench": "inference", "model": "ViT-B-32", "batch": n, "threads": torch.get_num_threads(),
                      "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
