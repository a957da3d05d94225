"""encode_image / encode_text throughput: cliplab vs transformers.CLIPModel on the same random weights.

ViT-B/32, batch 32, fp32 and bf16 autocast, interleaved call by call in one process (median).
Prints a table and one JSON line.
Usage: python benchmarks/bench_inference.py [--repeats 9] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def _race(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, called in turn (A B A B ...) so drift hits all alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    import transformers

    from cliplab.api import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.manual_seed(0)
    hf = transformers.CLIPModel(transformers.CLIPConfig()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, _, _ = load_model(d)
    n = args.batch
    images = torch.randn(n, 3, 224, 224)
    ids = torch.zeros(n, 77, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    for i in range(n):  # caption-like lengths: 8-24 tokens
        k = 8 + i % 17
        ids[i, 0], ids[i, 1:k] = 49406, torch.randint(1, 49000, (k - 1,), generator=g)
        ids[i, k] = 49407
    rows = []
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
            with ctx:
                sec = _race({"image_cliplab": lambda: ours.encode_image(images),
                             "image_hf": lambda: hf.get_image_features(pixel_values=images),
                             "text_cliplab": lambda: ours.encode_text(ids),
                             "text_hf": lambda: hf.get_text_features(input_ids=ids)}, args.repeats)
                r = {"precision": precision, **{name: n / s for name, s in sec.items()}}
            r["image_speedup"] = r["image_cliplab"] / r["image_hf"]
            r["text_speedup"] = r["text_cliplab"] / r["text_hf"]
            rows.append(r)
    print(f"{'precision':<10}{'image cliplab':>15}{'image HF':>10}{'x':>6}{'text cliplab':>14}{'text HF':>10}{'x':>6}")
    for r in rows:
        print(f"{r['precision']:<10}{r['image_cliplab']:>13.1f}/s{r['image_hf']:>8.1f}/s{r['image_speedup']:>6.2f}"
              f"{r['text_cliplab']:>12.1f}/s{r['text_hf']:>8.1f}/s{r['text_speedup']:>6.2f}")
    print(json.dumps({"bench": "inference", "model": "ViT-B-32", "batch": n, "threads": torch.get_num_threads(),
                      "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
