"""Training throughput: cliplab vs transformers.CLIPModel(return_loss=True), same random init and batch.

One process, interleaved; AdamW step included. Reports samples/s and model FLOP utilisation against
this machine's measured fp32 / bf16 matmul peak. With ``--compile`` a third contestant runs cliplab's model
through ``torch.compile`` (what ``cliplab train --compile`` does; compile time excluded, reported apart).
Usage: python benchmarks/bench_train.py [--steps 8] [--compile] [--same-optimizer]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def _peak(dtype: torch.dtype, n: int = 2048) -> float:
    """The machine's matmul peak: the best of 5 (n × n) @ (n × n) products (best, since others share the host)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _flops_per_sample(cfg) -> float:
    """Forward + backward ≈ 3 × 2 × (parameters touched per token) × tokens, for both towers."""
    v, t = cfg.vision, cfg.text
    vit = 12 * v.width**2 * v.layers * (v.grid_size**2 + 1)
    txt = 12 * t.width**2 * t.layers * 20  # ~20 tokens per caption after padding is trimmed
    return 3 * 2 * (vit + txt)


def caption_ids(n: int, context: int = 32) -> torch.Tensor:
    """(n, context) token ids of caption-length texts: 8-19 tokens, then padding."""
    ids = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        k = 8 + i % 12
        ids[i, 0], ids[i, 1:k] = 49406, torch.randint(1, 49000, (k - 1,))
        ids[i, k] = 49407
    return ids


def _paired_speedup(ours: list[float], peer: list[float]) -> float:
    """Median over rounds of the peer's step time over ours (adjacent steps: robust to the machine drifting)."""
    return round(statistics.median(p / o for o, p in zip(ours, peer, strict=True)), 2)


def make_step(loss_fn, optimizer):
    """One training step: loss, backward, optimizer update."""

    def step() -> None:
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    import transformers

    from cliplab.api import load_model
    from cliplab.loss import clip_loss
    from cliplab.train.config import OptimConfig
    from cliplab.train.optim import build_optimizer

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--compile", action="store_true", help="also time cliplab under torch.compile")
    p.add_argument("--same-optimizer", action="store_true", help="HF steps with cliplab's optimizer too")
    p.add_argument("--precisions", default="auto",
                   help="comma-separated fp32,bf16; auto: bf16 only where the CPU has it natively")
    args = p.parse_args()
    from cliplab.precision import cpu_has_bf16

    precisions = (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]) if args.precisions == "auto" \
        else args.precisions.split(",")
    torch.manual_seed(0)
    hf_cfg = transformers.CLIPConfig(
        projection_dim=256,
        vision_config=dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=6,
                           image_size=64, patch_size=8, hidden_act="gelu"),
        text_config=dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=4,
                         max_position_embeddings=32, hidden_act="gelu"))
    hf = transformers.CLIPModel(hf_cfg)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, cfg, _ = load_model(d)
    ours.train()
    hf.train()
    n = args.batch
    images = torch.randn(n, 3, 64, 64)
    ids = caption_ids(n)
    settings = OptimConfig(lr=1e-4)
    # cliplab's side steps with what `cliplab train` builds (fused AdamW); HF's with torch's default AdamW and
    # the same hyper-parameters, or with the same optimizer as cliplab under --same-optimizer.
    opt_ours = build_optimizer(ours, settings)
    opt_hf = build_optimizer(hf, settings) if args.same_optimizer else torch.optim.AdamW(
        hf.parameters(), lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
        weight_decay=settings.weight_decay)

    def loss_ours(model):
        out = model(images, ids)
        return clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)

    compiled = torch.compile(ours) if args.compile else None
    step_ours = make_step(lambda: loss_ours(ours), opt_ours)
    step_compiled = make_step(lambda: loss_ours(compiled), opt_ours)
    step_hf = make_step(lambda: hf(input_ids=ids, pixel_values=images, return_loss=True).loss, opt_hf)

    rows = []
    for precision in precisions:
        enabled = precision == "bf16"
        contestants = [("cliplab", step_ours), ("hf", step_hf)]
        if compiled is not None:
            contestants.append(("compiled", step_compiled))
        times = {name: [] for name, _ in contestants}
        for i in range(args.steps + 1):  # the first round is warm-up (and compilation)
            # The order flips every round: a step right after a same-shaped one reuses its freed buffers.
            for name, fn in (contestants if i % 2 == 0 else contestants[::-1]):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                    fn()
                times[name].append(time.perf_counter() - t)
        peak = _peak(torch.bfloat16 if enabled else torch.float32)
        row = {"precision": precision, "peak_gflops": round(peak / 1e9, 1)}
        for name in times:
            sec = statistics.median(times[name][1:])
            row[f"{name}_samples_per_s"] = round(n / sec, 1)
            row[f"{name}_mfu"] = round(_flops_per_sample(cfg.model) * n / sec / peak, 3)
        row["speedup"] = _paired_speedup(times["cliplab"][1:], times["hf"][1:])
        if compiled is not None:
            row["compile_seconds"] = round(times["compiled"][0], 1)
            row["compiled_speedup"] = _paired_speedup(times["compiled"][1:], times["hf"][1:])
        rows.append(row)
    print(f"{'precision':<10}{'cliplab/s':>11}{'HF/s':>9}{'x':>6}{'MFU cliplab':>13}{'MFU HF':>8}")
    for r in rows:
        print(f"{r['precision']:<10}{r['cliplab_samples_per_s']:>11.1f}{r['hf_samples_per_s']:>9.1f}"
              f"{r['speedup']:>6.2f}{r['cliplab_mfu']:>13.2f}{r['hf_mfu']:>8.2f}")
        if "compiled_samples_per_s" in r:
            print(f"{'':<10}compiled: {r['compiled_samples_per_s']:.1f}/s = {r['compiled_speedup']:.2f}x HF, "
                  f"MFU {r['compiled_mfu']:.2f}, first step (compilation) {r['compile_seconds']:.0f} s")
    print(json.dumps({"bench": "train", "model": "ViT 256x6 @64px/8 + text 256x4", "batch": n,
                      "same_optimizer": args.same_optimizer, "rows": rows}))


if __name__ == "__main__":
    main()
