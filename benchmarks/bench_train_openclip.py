"""Training throughput: cliplab vs open_clip, same architecture, random init, batch and precision.

open_clip needs its own environment (torch 2.14.1 + torchvision): run with the parity venv,
``make parity-env && .venv-parity/bin/python benchmarks/bench_train_openclip.py``. One process,
interleaved steps (forward + loss + backward + AdamW); the first step of each is warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    try:
        import open_clip
    except ModuleNotFoundError:
        raise SystemExit("this benchmark needs open_clip, which has its own environment: make parity-env && "
                         ".venv-parity/bin/python benchmarks/bench_train_openclip.py") from None
    from bench_train import _paired_speedup, caption_ids, make_step  # this folder is on sys.path when run as a script
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    from cliplab.convert.openai import from_openai, infer_config
    from cliplab.loss import clip_loss
    from cliplab.model.build import create_model
    from cliplab.train.config import OptimConfig
    from cliplab.train.optim import build_optimizer

    torch.manual_seed(0)
    ref = open_clip.CLIP(
        embed_dim=256,
        vision_cfg=CLIPVisionCfg(layers=6, width=256, head_width=64, image_size=64, patch_size=8),
        text_cfg=CLIPTextCfg(context_length=32, vocab_size=49408, width=256, heads=4, layers=4),
    )
    sd = ref.state_dict()
    cfg = infer_config(sd, activation="gelu")
    ours = create_model(cfg)
    ours.load_state_dict(from_openai(sd))
    ours.train()
    ref.train()
    n = args.batch
    images = torch.randn(n, 3, 64, 64)
    ids = caption_ids(n)
    with torch.no_grad():  # same model, same numbers before timing
        a = ours.encode_text(ids, normalize=True)
        b = ref.encode_text(ids, normalize=True)
        max_diff = (a - b).abs().max().item()
    ref_loss = ClipLoss()

    def loss_ours():
        out = ours(images, ids)
        return clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)

    # Each side steps with what its trainer builds: cliplab's fused AdamW; open_clip's training script's
    # torch.optim.AdamW (not fused), with the same hyper-parameters.
    settings = OptimConfig(lr=1e-4)
    step_ours = make_step(loss_ours, build_optimizer(ours, settings))
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                                weight_decay=settings.weight_decay)
    step_ref = make_step(lambda: ref_loss(*ref(images, ids)), opt_ref)

    rows = []
    for precision in ("fp32", "bf16"):
        enabled = precision == "bf16"
        times = {"cliplab": [], "open_clip": []}
        contestants = [("cliplab", step_ours), ("open_clip", step_ref)]
        for i in range(args.steps + 1):  # the order flips every round (the second reuses freed buffers)
            for name, fn in (contestants if i % 2 == 0 else contestants[::-1]):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                    fn()
                times[name].append(time.perf_counter() - t)
        row = {"precision": precision}
        for name in times:
            row[f"{name}_samples_per_s"] = round(n / statistics.median(times[name][1:]), 1)
        row["speedup"] = _paired_speedup(times["cliplab"][1:], times["open_clip"][1:])
        rows.append(row)
    print(f"text embeddings before training agree to {max_diff:.1e}")
    print(f"{'precision':<10}{'cliplab/s':>11}{'open_clip/s':>13}{'x':>6}")
    for r in rows:
        print(f"{r['precision']:<10}{r['cliplab_samples_per_s']:>11.1f}{r['open_clip_samples_per_s']:>13.1f}"
              f"{r['speedup']:>6.2f}")
    print(json.dumps({"bench": "train_vs_open_clip", "torch": torch.__version__, "open_clip": open_clip.__version__,
                      "model": "ViT 256x6 @64px/8 + text 256x4 (ctx 32)", "batch": n, "max_abs_diff": max_diff,
                      "rows": rows}))


if __name__ == "__main__":
    main()
