"""torchrun with 2 CPU processes (gloo) equals 1 process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from cliplab.checkpoint import load_checkpoint
from cliplab.train.state import resolve_run_dir

pytestmark = pytest.mark.integration


def _data(folder):
    folder.mkdir()
    rows = ["filepath,title"]
    for i in range(32):
        Image.new("RGB", (36, 36), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,a picture number {i} with colour {i % 5}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return folder / "train.csv"


def _train(csv, out, nproc, batch):
    args = ["-m", "cliplab", "train", "--model", "ViT-Tiny-32px", "--data-format", "csv", "--train-data", str(csv),
            "--steps", "3", "--batch-size", str(batch), "--workers", "0", "--seed", "0", "--lr", "1e-3",
            "--warmup", "1", "--save-every", "3", "--output", str(out), "data.augment=false", "log_every=1"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", "29533", *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_two_processes_equal_one(tmp_path):
    csv = _data(tmp_path / "data")
    one = tmp_path / "one"
    two = tmp_path / "two"
    _train(csv, one, 1, 16)
    res = _train(csv, two, 2, 8)
    assert "global batch 16" in res.stdout
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (one, two)]
    assert len(losses[0]) == 3
    for a, b in zip(*losses, strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a))
    _, sd1 = load_checkpoint(resolve_run_dir(one))
    _, sd2 = load_checkpoint(resolve_run_dir(two))
    for k in sd1:
        diff = (sd1[k] - sd2[k]).abs().max().item()
        assert diff <= 1e-5, f"{k}: {diff}"
    # only rank 0 wrote: one metrics line per step, one checkpoint
    assert len(list((two / "checkpoints").glob("step-*"))) == 1
    assert len(losses[1]) == 3
