"""torchrun with 2 CPU processes (gloo) equals 1 process with the same global batch."""

import json
import os
import subprocess
import sys
import time

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


def _train(csv, out, nproc, batch, *extra):
    args = ["-m", "cliplab", "train", "--model", "ViT-Tiny-32px", "--data-format", "csv", "--train-data", str(csv),
            "--steps", "3", "--batch-size", str(batch), "--workers", "0", "--seed", "0", "--lr", "1e-3",
            "--warmup", "1", "--save-every", "3", "--output", str(out), "data.augment=false", "log_every=1",
            *extra]
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
    val = ["--val-data", str(csv), "--eval-every", "2"]  # rank 0 alone validates: must not wait on rank 1
    _train(csv, one, 1, 16, *val)
    res = _train(csv, two, 2, 8, *val)
    assert "global batch 16" in res.stdout
    assert "FutureWarning" not in res.stderr  # torch's deprecation of the gather is not the user's to act on
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)]
    losses = [[r["loss"] for r in run if "loss" in r] for run in rows]
    val_losses = [[r["val_loss"] for r in run if "val_loss" in r] for run in rows]
    assert len(losses[0]) == 3 and len(val_losses[0]) == len(val_losses[1]) == 1
    assert abs(val_losses[0][0] - val_losses[1][0]) <= 1e-5 * max(1.0, abs(val_losses[0][0]))
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


def test_validation_on_one_shard_is_shared_by_two_processes(tmp_path):
    """Fewer validation shards than processes: each process reads the global batches and embeds its slice;
    the loss over the gathered batch equals one process's."""
    from cliplab.data.shards import write_shards

    csv = _data(tmp_path / "data")
    write_shards(((tmp_path / "data" / f"{i}.png", f"shade {i}") for i in range(32)), tmp_path / "val", 32)
    val = ["--val-data", str(tmp_path / "val" / "00000.tar"), "--eval-every", "3"]
    _train(csv, tmp_path / "one", 1, 16, *val)
    _train(csv, tmp_path / "two", 2, 8, *val)
    val_losses = [[json.loads(line)["val_loss"] for line in (tmp_path / run / "metrics.jsonl").read_text()
                   .splitlines() if "val_loss" in line] for run in ("one", "two")]
    assert len(val_losses[0]) == 1 and val_losses[1] == pytest.approx(val_losses[0], rel=1e-5)


def test_bad_samples_of_every_rank_are_counted(tmp_path):
    csv = _data(tmp_path / "data")
    with open(csv, "a") as fh:
        fh.writelines(f"missing{i}.png,gone\n" for i in range(4))
    counts = []
    for nproc, batch in ((1, 16), (2, 8)):
        out = tmp_path / f"p{nproc}"
        _train(csv, out, nproc, batch)
        counts.append(json.loads((out / "summary.json").read_text())["bad_samples"])
        assert len((out / "bad_samples.jsonl").read_text().splitlines()) == counts[-1]
    assert counts[0] == counts[1] > 0


def test_time_budget_ends_every_rank_at_the_same_step(tmp_path):
    """Each rank measuring its own speed could plan a different number of steps and leave the other stuck
    in a collective; rank 0's plan is broadcast."""
    csv = _data(tmp_path / "data")
    out = tmp_path / "budget"
    args = ["-m", "cliplab", "train", "--model", "ViT-Tiny-32px", "--train-data", str(csv), "--steps", "100000",
            "--time-budget-minutes", "0.15", "--batch-size", "4", "--workers", "0", "--output", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29534", *args]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert resolve_run_dir(out).name == f"step-{summary['steps']:08d}"


def test_an_error_on_one_rank_is_one_line_on_every_rank(tmp_path):
    import tarfile

    from cliplab.data.synthetic import SyntheticWorld, write_shards

    write_shards(SyntheticWorld(), 20, tmp_path / "wds", per_shard=20)
    tarfile.open(tmp_path / "wds" / "00001.tar", "w").close()  # rank 1's shard is empty
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", "29535", "-m", "cliplab", "train", "--model", "ViT-Tiny-32px", "--train-data",
           str(tmp_path / "wds" / "{00000..00001}.tar"), "--steps", "4", "--batch-size", "4", "--workers", "0",
           "--output", str(tmp_path / "run")]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert "error: the shards yielded no samples" in res.stderr
    assert "error: process 0: lost contact with the other processes" in res.stderr
    assert "[rank0]: Traceback" not in res.stderr


def test_compiled_ddp_trains_like_one_eager_process(tmp_path):
    """`--compile` under torchrun: the compiled module is wrapped by DDP and unwrapped for checkpoints."""
    csv = _data(tmp_path / "data")
    one, two = tmp_path / "one", tmp_path / "two"
    _train(csv, one, 1, 16)
    _train(csv, two, 2, 8, "--compile")
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (one, two)]
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    _, sd1 = load_checkpoint(resolve_run_dir(one))
    _, sd2 = load_checkpoint(resolve_run_dir(two))
    assert sd1.keys() == sd2.keys()


def _embed(out, csv, checkpoint, port, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "cliplab", "embed", "--checkpoint", str(checkpoint), "--images",
           str(csv), "--csv-caption-key", "title", "--output", str(out), "--part-size", "4", *extra]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)


def test_embedding_under_torchrun_agrees_on_the_store(tmp_path):
    from cliplab.infer.store import EmbeddingStore
    from tests.integration.helpers import tiny_checkpoint

    csv = _data(tmp_path / "data")
    rows = csv.read_text().splitlines()
    (tmp_path / "data" / "dup.csv").write_text("\n".join([*rows, rows[1], rows[1]]) + "\n")  # a row thrice
    ck_a, ck_b = tiny_checkpoint(tmp_path / "a"), tiny_checkpoint(tmp_path / "b")
    store = tmp_path / "store"
    res = _embed(store, tmp_path / "data" / "dup.csv", ck_a, 29536)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(EmbeddingStore(store).metadata()) == len(rows) + 1  # every row once, the repeated one thrice
    assert res.stdout.count("embedded") == 1  # one summary, rank 0's, of every process's work
    files = sorted(p.name for p in store.iterdir())
    res = _embed(store, csv, ck_b, 29537)  # another model: every process refuses, nothing is added
    assert res.returncode != 0 and "store was built with" in res.stderr
    assert sorted(p.name for p in store.iterdir()) == files
    res = _embed(tmp_path / "fresh", csv, ck_a, 29538, "--texts", str(tmp_path / "none.txt"))
    assert res.returncode != 0 and "none.txt" in res.stderr
    assert not (tmp_path / "fresh").exists()  # rank 0's bad input stopped rank 1 before it wrote


def _set_statistics(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)


def _validate_on_rank(rank, csv, port, results):
    import torch
    import torch.distributed as dist

    from cliplab.api import create_model
    from cliplab.config import CLIPConfig
    from cliplab.tokenizer import get_tokenizer
    from cliplab.train.config import load_train_config
    from cliplab.train.validation import validation_hook

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = create_model("RN-Tiny-64px")
    _set_statistics(model, seed=rank)  # after a DDP step each rank's BatchNorm statistics are its own
    cfg = load_train_config(None, [f"data.val_data={csv}", f"data.train_data={csv}", "batch_size=8",
                                   "data.workers=0"])
    hook = validation_hook(cfg, CLIPConfig.for_model(model.cfg), get_tokenizer(), torch.device("cpu"),
                           rank=rank, world_size=2)
    results[rank] = hook(model, 1)["val_loss"]
    dist.destroy_process_group()


def test_validation_under_ddp_uses_rank_0s_batch_norm_statistics(tmp_path):
    """The checkpoint holds rank 0's statistics; validation must use them on every rank, whatever each
    rank's own copy became after its last step: the loss equals one process's with rank 0's model."""
    import torch
    import torch.multiprocessing as mp

    from cliplab.api import create_model
    from cliplab.config import CLIPConfig
    from cliplab.tokenizer import get_tokenizer
    from cliplab.train.config import load_train_config
    from cliplab.train.validation import validation_hook

    csv = _data(tmp_path / "data")
    results = mp.Manager().dict()
    # spawned, not forked: a fork of this process, whose torch threads other tests have started, can hang
    ctx = mp.start_processes(_validate_on_rank, args=(str(csv), 29536, results), nprocs=2, start_method="spawn",
                             join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for process in ctx.processes:
                process.kill()
            pytest.fail("the two validating processes did not finish in 240 s")
    torch.manual_seed(0)
    model = create_model("RN-Tiny-64px")
    _set_statistics(model, seed=0)
    cfg = load_train_config(None, [f"data.val_data={csv}", f"data.train_data={csv}", "batch_size=16",
                                   "data.workers=0"])
    one = validation_hook(cfg, CLIPConfig.for_model(model.cfg), get_tokenizer(), torch.device("cpu"))(model, 1)
    assert results[0] == results[1] == pytest.approx(one["val_loss"], rel=1e-5)
