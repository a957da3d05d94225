"""End-to-end embedding throughput (decode + preprocess + encode) and where the time goes.

Writes N JPEGs (synthetic scenes at 256 px), then embeds them with `embed_collection` using 0, 1 and 2
DataLoader workers, and times decode+preprocess alone and encode alone. ViT-B/32 random weights, fp32
and bf16. Usage: python benchmarks/bench_embed.py [--n 512] [--model ViT-B-32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from cliplab.api import create_model
    from cliplab.config import PreprocessConfig
    from cliplab.data.synthetic import SyntheticWorld, WorldConfig
    from cliplab.infer.embed import embed_collection, list_items
    from cliplab.infer.store import EmbeddingStore
    from cliplab.transforms import Preprocess, load_image

    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    model = create_model(args.model).eval()
    pre = Preprocess(PreprocessConfig(image_size=model.cfg.vision.image_size))
    world = SyntheticWorld(WorldConfig(image_size=256, supersample=1))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "imgs"
        folder.mkdir()
        for i in range(args.n):
            world.sample(world.rng(0, i)).image.save(folder / f"{i:05d}.jpg", quality=90)
        items = list_items(folder)
        t = time.perf_counter()
        pixels = torch.stack([pre(load_image(it["path"])) for it in items])
        decode = time.perf_counter() - t
        for precision in ("fp32", "bf16"):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                t = time.perf_counter()
                for s in range(0, len(pixels), args.batch):
                    model.encode_image(pixels[s : s + args.batch])
                encode = time.perf_counter() - t
            for workers in (0, 1, 2):
                store = EmbeddingStore.create(Path(d) / f"store-{precision}-{workers}", dim=model.cfg.embed_dim)
                report = embed_collection(model, pre, items, store, batch_size=args.batch, workers=workers,
                                          precision=precision, progress=False)
                rows.append({"precision": precision, "workers": workers,
                             "images_per_s": round(report.images_per_second, 1),
                             "decode_preprocess_per_s": round(args.n / decode, 1),
                             "encode_only_per_s": round(args.n / encode, 1)})
    print(f"{'precision':<10}{'workers':>8}{'end-to-end img/s':>18}{'decode+prep img/s':>19}{'encode img/s':>14}")
    for r in rows:
        print(f"{r['precision']:<10}{r['workers']:>8}{r['images_per_s']:>18.1f}{r['decode_preprocess_per_s']:>19.1f}"
              f"{r['encode_only_per_s']:>14.1f}")
    print(json.dumps({"bench": "embed", "model": args.model, "n": args.n, "rows": rows}))


if __name__ == "__main__":
    main()
