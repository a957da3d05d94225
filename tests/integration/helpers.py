"""Shared set-up for the integration tests."""

import dataclasses
import json
from pathlib import Path

from PIL import Image

from cliplab.checkpoint import save_checkpoint
from cliplab.config import CLIPConfig, load_arch
from cliplab.model.build import create_model


def tiny_checkpoint(path: Path, arch: str = "ViT-Tiny-32px", embed_dim: int | None = None) -> Path:
    """A randomly initialised native checkpoint of a small architecture, saved at ``path``."""
    model_cfg = load_arch(arch)
    if embed_dim is not None:
        model_cfg = dataclasses.replace(model_cfg, embed_dim=embed_dim)
    cfg = CLIPConfig.for_model(model_cfg)
    save_checkpoint(create_model(cfg.model), cfg, path)
    return path


COMMON = ["--model", "ViT-Tiny-32px", "--batch-size", "16", "--workers", "0", "--seed", "1", "--warmup", "2",
          "log_every=1"]  # `cliplab train` flags for a small, fast, deterministic run


def run_losses(run: Path) -> list[float]:
    """The training losses a run logged, in order."""
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def tiny_csv(folder: Path, n: int = 24) -> Path:
    """``n`` flat-colour 36-px images and a CSV of them with 6 distinct captions."""
    folder.mkdir()
    rows = ["filepath,title"]
    for i in range(n):
        Image.new("RGB", (36, 36), ((i * 37) % 256, (i * 91) % 256, 60)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,shade {i % 6}")
    (folder / "d.csv").write_text("\n".join(rows) + "\n")
    return folder / "d.csv"
