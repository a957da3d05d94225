"""The real `cliplab train` on generated data: learning, determinism, resume after a kill, errors."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import cliplab
from cliplab.cli.main import main
from cliplab.train.state import resolve_run_dir

pytestmark = pytest.mark.integration
COMMON = ["--model", "ViT-Tiny-32px", "--batch-size", "16", "--workers", "0", "--seed", "1", "--warmup", "2",
          "log_every=1"]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_learns_and_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert main(["train", *COMMON, "--steps", "12", "--lr", "2e-3", "--output", str(tmp_path / name)]) == 0
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert a == b and len(a) == 12
    assert sum(a[-3:]) / 3 < sum(a[:3]) / 3  # the loss goes down
    model, _, _ = cliplab.load(tmp_path / "a")  # a run folder loads its latest checkpoint
    assert model.cfg.vision.image_size == 32
    assert (tmp_path / "a" / "curves.png").exists() and (tmp_path / "a" / "summary.json").exists()


def test_resume_gives_identical_losses(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*COMMON, "--steps", "8", "--save-every", "3"]
    assert main(["train", *args, "--output", str(full)]) == 0
    assert main(["train", *args, "--output", str(part), "--stop-after", "5"]) == 0  # as if killed at step 5
    assert resolve_run_dir(part).name == "step-00000003"
    assert main(["train", *args, "--output", str(part), "--resume", "latest"]) == 0
    assert _losses(part) == _losses(full)


def test_kill_9_leaves_a_loadable_latest(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cliplab", "train", *COMMON, "--steps", "400", "--save-every", "2",
           "--output", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((run / "checkpoints").glob("step-*"))) < 3:
        time.sleep(0.2)
    time.sleep(0.37)  # land somewhere in the middle of the next save
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    latest = resolve_run_dir(run)
    assert latest is not None
    model, _, _ = cliplab.load(run)
    assert model is not None
    assert main(["train", *COMMON, "--steps", "400", "--save-every", "2", "--output", str(run), "--resume",
                 "latest", "--stop-after", str(int(latest.name.split("-")[1]) + 2)]) == 0


def test_bad_samples_are_skipped_and_reported(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["filepath,title"]
    for i in range(20):
        Image.new("RGB", (40, 40), (i * 12, 50, 200 - i * 9)).save(data / f"{i}.png")
        rows.append(f"{i}.png,colour number {i}")
    (data / "bad.png").write_bytes(b"garbage")
    rows += ["bad.png,a broken file", "missing.png,no such file"]
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    args = ["train", *COMMON, "--data-format", "csv", "--train-data", str(data / "train.csv"), "--steps", "3",
            "--batch-size", "11", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    bad = [json.loads(line) for line in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()]
    assert {Path(b["source"].rsplit(":", 1)[0]).name for b in bad} == {"train.csv"}
    assert any("not found" in b["reason"] for b in bad) and any("unreadable" in b["reason"] for b in bad)
    assert main([*args, "--on-bad-sample", "error", "--output", str(tmp_path / "run2")]) == 2
    assert "bad sample" in capsys.readouterr().err


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--data-format", "csv", "--steps", "1", "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["train", "optim.lrr=3", "--output", str(tmp_path / "x")]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def test_diverging_loss_names_the_step(tmp_path, capsys):
    assert main(["train", *COMMON, "--steps", "5", "--lr", "1e9", "optim.grad_clip_norm=null", "--output",
                 str(tmp_path / "r"), "--save-every", "1"]) == 2
    err = capsys.readouterr().err
    assert "step" in err and "diverged" in err
    failed = int(err.split("step ")[1].split(":")[0])
    last = resolve_run_dir(tmp_path / "r")
    assert f"the last good checkpoint is {last}" in err and last.name == f"step-{failed - 1:08d}"  # the one before


def test_interpolate(tmp_path):
    for name, seed in (("a", "1"), ("b", "2")):
        main(["train", *COMMON, "--steps", "1", "--seed", seed, "--output", str(tmp_path / name)])
    assert main(["interpolate", str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "0.25", "--output",
                 str(tmp_path / "mix")]) == 0
    a, _, _ = cliplab.load(tmp_path / "a")
    b, _, _ = cliplab.load(tmp_path / "b")
    m, _, _ = cliplab.load(tmp_path / "mix")
    w = "visual.proj.weight"
    expected = 0.75 * a.state_dict()[w] + 0.25 * b.state_dict()[w]
    assert (m.state_dict()[w] - expected).abs().max() < 1e-6


def _csv(folder, n=24):
    folder.mkdir()
    rows = ["filepath,title"]
    for i in range(n):
        Image.new("RGB", (36, 36), ((i * 37) % 256, (i * 91) % 256, 60)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,shade {i % 6}")
    (folder / "d.csv").write_text("\n".join(rows) + "\n")
    return folder / "d.csv"


def test_augmented_csv_resumes_exactly_with_a_worker(tmp_path):
    """Random crops are drawn from (seed, epoch, row), not from the global generator that a resume and
    every new DataLoader worker reseed: default settings (augmentation on, one worker) resume exactly."""
    data = _csv(tmp_path / "data")
    rng = torch.Generator().manual_seed(0)
    for png in data.parent.glob("*.png"):  # texture, so that different crops give different pixels
        Image.fromarray(torch.randint(0, 256, (36, 36, 3), generator=rng, dtype=torch.uint8).numpy()).save(png)
    args = ["train", "--model", "ViT-Tiny-32px", "--train-data", str(data), "--batch-size", "8", "--steps", "6",
            "--save-every", "2", "--workers", "1", "--seed", "2", "log_every=1"]
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    assert main([*args, "--output", str(tmp_path / "part"), "--stop-after", "3"]) == 0
    assert main(["train", "--resume", "latest", "--output", str(tmp_path / "part")]) == 0
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")


def test_pruning_never_removes_the_checkpoint_latest_names(tmp_path):
    """Resuming from an older step leaves later-named checkpoints; keep_last must not prune the new one."""
    run = tmp_path / "run"
    args = ["train", *COMMON, "--save-every", "2", "--output", str(run)]
    assert main([*args, "--steps", "8"]) == 0
    older = run / "checkpoints" / "step-00000004"
    assert main(["train", "--resume", str(older), "--output", str(run), "keep_last=1", "--stop-after", "7"]) == 0
    latest = resolve_run_dir(run)
    assert latest.name == "step-00000006" and latest.is_dir()
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000006"]
    cliplab.load(run)


def test_a_log_line_torn_by_a_kill_does_not_stop_a_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "3", "--save-every", "2", "--output", str(run)]) == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "l')
    assert main(["train", "--resume", "latest", "--steps", "4", "--output", str(run)]) == 0
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]


def test_nothing_to_train_writes_a_valid_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "2", "--output", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--steps", "1", "--output", str(tmp_path / "from")]) == 0
    assert "nothing to train" in capsys.readouterr().out
    text = (tmp_path / "from" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["final_loss"] is None and summary["steps"] == 2


def test_resume_with_another_global_batch_and_steps_with_epochs_are_said(tmp_path, capsys):
    run = tmp_path / "run"
    data = _csv(tmp_path / "data")
    assert main(["train", *COMMON, "--train-data", str(data), "--steps", "2", "--epochs", "3",
                 "--output", str(run)]) == 0
    assert "--epochs 3 is not used" in capsys.readouterr().out
    assert main(["train", "--resume", "latest", "--steps", "3", "--batch-size", "8", "--output", str(run)]) == 0
    assert "trained with a global batch of 16; it goes on with 8" in capsys.readouterr().out


def test_resume_before_the_first_checkpoint_keeps_the_runs_settings(tmp_path, capsys):
    """Killed before its first checkpoint, a run folder has only its config.json: --resume latest starts
    afresh with those settings, not with the defaults (synthetic data)."""
    data = _csv(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--train-data", str(data), "--steps", "2", "--output", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints" / ".tmp-step-00000002").mkdir(parents=True)  # a kill in the middle of the first save
    capsys.readouterr()
    assert main(["train", "--resume", "latest", "--output", str(run)]) == 0
    assert "starting from scratch" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["data"]["train_data"] == str(data) and saved["steps"] == 2


def test_validation_data_without_usable_pairs_is_said(tmp_path, capsys):
    (tmp_path / "val").mkdir()
    for i in range(20):  # images without captions
        Image.new("RGB", (36, 36), (i * 12, 0, 0)).save(tmp_path / "val" / f"{i}.png")
    assert main(["train", *COMMON, "--steps", "2", "--val-data", str(tmp_path / "val"), "--eval-every", "2",
                 "--output", str(tmp_path / "run")]) == 0
    assert "had 2 usable pairs, so no validation loss at step 2" in capsys.readouterr().out


def test_bf16_validation_loss_and_lit_fine_tuning(tmp_path):
    data = _csv(tmp_path / "data")
    base = tmp_path / "base"
    assert main(["train", *COMMON, "--steps", "2", "--output", str(base)]) == 0
    run = tmp_path / "ft"
    assert main(["train", *COMMON, "--init-from", str(base), "--lock-image", "--precision", "bf16", "--data-format",
                 "csv", "--train-data", str(data), "--val-data", str(data), "--steps", "4", "eval_every=2",
                 "--output", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]
    before, _, _ = cliplab.load(base)
    after, _, _ = cliplab.load(run)
    sd0, sd1 = before.state_dict(), after.state_dict()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0 if k.startswith("visual."))  # locked tower unchanged
    assert not torch.equal(sd0["text.proj.weight"], sd1["text.proj.weight"])


def test_accumulation_equals_one_big_batch(tmp_path):
    """--accum-steps 4 with the same global batch gives the same run as one batch (gradient caching)."""
    runs = {}
    for name, batch, accum in (("one", "64", "1"), ("four", "16", "4")):
        out = tmp_path / name
        assert main(["train", *COMMON, "--steps", "3", "--batch-size", batch, "--accum-steps", accum,
                     "--output", str(out)]) == 0
        runs[name] = _losses(out)
    for a, b in zip(runs["one"], runs["four"], strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    assert main(["train", *COMMON, "--steps", "4", "--tensorboard", "--output", str(run)]) == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert any("loss" in t for t in tags), tags
    loss_tag = next(t for t in tags if t.endswith("loss"))
    logged = [e.value for e in acc.Scalars(loss_tag)]
    assert logged == pytest.approx(_losses(run), rel=1e-6)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """`--compile` (torch.compile, inductor on CPU) trains to the same losses as eager, within float noise."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    args = [*COMMON, "--steps", "3", "data.augment=false"]
    assert main(["train", *args, "--output", str(eager)]) == 0
    assert main(["train", *args, "--compile", "--output", str(compiled)]) == 0
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)


@pytest.mark.parametrize("resampled", [False, True])
def test_shard_resume_replays_the_stream_exactly(tmp_path, resampled):
    """Kill mid-epoch (two DataLoader workers), resume: the same batches, so the same losses, as one run;
    also for shards drawn with replacement (an endless stream)."""
    from cliplab.data.shards import write_shards

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    samples = []
    for i in range(40):
        Image.new("RGB", (36, 36), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(imgs / f"{i}.png")
        samples.append((imgs / f"{i}.png", f"a picture number {i} with colour {i % 5}"))
    write_shards(samples, tmp_path / "shards", per_shard=10)
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["--model", "ViT-Tiny-32px", "--batch-size", "8", "--workers", "2", "--seed", "1", "--warmup", "2",
            "--data-format", "wds", "--train-data", str(tmp_path / "shards" / "{00000..00003}.tar"), "--steps", "14",
            "--save-every", "4", "log_every=1", "data.shuffle_buffer=16",  # augmentation on: replayed too
            f"data.resampled={str(resampled).lower()}"]
    assert main(["train", *args, "--output", str(full)]) == 0
    assert main(["train", *args, "--output", str(part), "--stop-after", "10"]) == 0
    assert resolve_run_dir(part).name == "step-00000008"  # 6 batches per epoch: resumes in epoch 2
    assert main(["train", *args, "--output", str(part), "--resume", "latest"]) == 0
    assert _losses(part) == _losses(full) and len(_losses(full)) == 14


def test_stream_of_only_bad_samples_stops_with_one_line(tmp_path, capsys, monkeypatch):
    from cliplab.train import loop

    monkeypatch.setattr(loop, "MAX_UNUSABLE_BATCHES", 5)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("filepath,title\n" + "".join(f"gone{i}.png,a photo\n" for i in range(8)))
    assert main(["train", *COMMON, "--train-data", str(data / "train.csv"), "--steps", "2", "--batch-size", "4",
                 "--output", str(tmp_path / "run")]) == 2  # format inferred from the .csv suffix
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's line
    assert err.startswith("error: no usable pairs in 5 batches in a row (20 bad samples")


def test_siglip_on_a_shipped_architecture(tmp_path):
    assert main(["train", *COMMON, "--steps", "2", "--loss", "siglip", "--output", str(tmp_path / "s")]) == 0
    model, _, _ = cliplab.load(tmp_path / "s")
    assert model.logit_bias is not None and abs(model.logit_bias.item() + 10) < 0.1
    assert abs(model.logit_scale.item() - math.log(10)) < 0.1


def test_run_folder_reuse_resume_and_longer_schedule(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *COMMON, "--save-every", "2", "--output", str(run)]
    assert main([*args, "--steps", "4"]) == 0
    ckpt = resolve_run_dir(run)
    assert json.loads((ckpt / "train_config.json").read_text())["train"]["steps"] == 4
    capsys.readouterr()
    assert main([*args, "--steps", "1"]) == 2  # a fresh run into a folder that holds one: refused
    assert "already holds a run's checkpoints" in capsys.readouterr().err
    assert resolve_run_dir(run) == ckpt  # nothing touched
    assert main([*args, "--steps", "6", "--resume", "latest"]) == 0  # a longer schedule
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == list(range(1, 7))
    assert main(["train", *COMMON, "--steps", "7", "--resume", str(run), "--output", str(tmp_path / "b")]) == 0
    assert resolve_run_dir(tmp_path / "b").name == "step-00000007"  # --resume takes a run folder too


def test_bad_sample_count_survives_resume(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["filepath\ttitle"]
    for i in range(12):
        Image.new("RGB", (36, 36), (i * 20, 90, 40)).save(data / f"{i}.png")
        rows.append(f"{i}.png\tshade {i}")
    rows += ["missing1.png\tgone", "missing2.png\tgone"]
    (data / "train.tsv").write_text("\n".join(rows) + "\n")
    args = ["train", *COMMON, "--train-data", str(data / "train.tsv"), "--csv-separator", "\\t", "--batch-size",
            "7", "--steps", "6", "--save-every", "3"]
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    assert main([*args, "--output", str(tmp_path / "part"), "--stop-after", "4"]) == 0
    assert main([*args, "--output", str(tmp_path / "part"), "--resume", "latest"]) == 0
    full, part = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("full", "part"))
    assert full["bad_samples"] == part["bad_samples"] > 0
    lines = [(tmp_path / r / "bad_samples.jsonl").read_text() for r in ("full", "part")]
    assert lines[0] == lines[1]


def test_locked_resnet_keeps_its_batch_norm_statistics(tmp_path):
    base = tmp_path / "base"
    assert main(["train", *COMMON, "--model", "RN-Tiny-64px", "--steps", "1", "--batch-size", "4",
                 "--output", str(base)]) == 0
    assert main(["train", *COMMON, "--init-from", str(base), "--lock-image", "--steps", "2", "--batch-size", "4",
                 "--output", str(tmp_path / "lit")]) == 0
    sd0 = cliplab.load(base)[0].state_dict()
    sd1 = cliplab.load(tmp_path / "lit")[0].state_dict()
    assert any("running_mean" in k for k in sd0)
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0 if k.startswith("visual."))


@pytest.mark.parametrize(("flags", "message"), [
    (["--save-every", "0"], "save_every must be >= 1"),
    (["--steps", "-3"], "steps must be >= 1"),
    (["--lr", "-0.001"], "lr, weight_decay and warmup_steps must be >= 0"),
    (["optim.lr=-1e-3"], "lr, weight_decay and warmup_steps must be >= 0"),
    (["--workers", "-1"], "data.workers and data.shuffle_buffer must be >= 0"),
    (["--device", "tpu"], "device 'tpu': not a device name"),
    (["optim.betas=[0.9]"], "optim.betas: expected a list of 2 values"),
    (["--csv-separator", "ab", "--train-data", "x.csv"], "csv separator 'ab': must be one character"),
    (["--train-data", "nowhere"], "nowhere: cannot tell its data format"),
    (["--data-format", "synthetic", "--train-data", "x.csv"], "is not read with data.format synthetic"),
    (["optim.grad_clip_norm=-1"], "optim.grad_clip_norm must be > 0"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio must be in [0, 1]"),
    (["--lr", "inf"], "optim.lr must be finite"),
    (["--device", "meta"], "training runs on cpu or cuda"),
    (["--batch-size", "1"], "batch_size must be >= 2"),
    (["--precision", "fp16", "--device", "cpu"], "precision fp16 needs CUDA"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, flags, message):
    args = [*COMMON, "--steps", "1", "--output", str(tmp_path / "r")]
    assert main(["train", *args, *flags]) == 2  # (a flag given twice: the last one counts)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err


def test_resume_with_other_settings_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "1", "--output", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--model", "RN-Tiny-64px", "--steps", "2", "--resume", str(run),
                 "--output", str(tmp_path / "b")]) == 2
    assert "its architecture differs" in capsys.readouterr().err
    assert main(["train", *COMMON, "--lock-image", "--steps", "2", "--resume", str(run),
                 "--output", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "--lock-image / --lock-text must be as in the run being resumed" in err


def test_unreadable_trainer_state_is_one_line(tmp_path, capsys):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "1", "--output", str(run)]) == 0
    state = resolve_run_dir(run) / "trainer.pt"
    for content in (b"garbage", pickle.dumps(Payload())):
        state.write_bytes(content)
        capsys.readouterr()
        assert main(["train", "--resume", "latest", "--steps", "2", "--output", str(run)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "trainer.pt: cannot read the trainer state" in err[0]
    assert not (tmp_path / "pwned").exists()


def test_resume_is_exact_after_skipped_batches(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["filepath,title"]
    for i in range(24):
        if i % 2:
            rows.append(f"gone{i}.png,missing")  # half the rows: batches of 2 are often unusable
        else:
            Image.new("RGB", (36, 36), (i * 10, 80, 160)).save(data / f"{i}.png")
            rows.append(f"{i}.png,shade {i}")
    (data / "d.csv").write_text("\n".join(rows) + "\n")
    args = ["train", *COMMON, "--train-data", str(data / "d.csv"), "--batch-size", "2", "--steps", "12",
            "--save-every", "3"]
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    assert main([*args, "--output", str(tmp_path / "part"), "--stop-after", "7"]) == 0
    assert main([*args, "--output", str(tmp_path / "part"), "--resume", "latest"]) == 0
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    full, part = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("full", "part"))
    assert full["bad_samples"] == part["bad_samples"]
    # a batch of one good pair and one bad sample has nothing to contrast: its good pair is counted as left
    # out, so every sample drawn is used, bad or left out: 2 x drawn = 2 x 12 steps + bad + left out
    from cliplab.train.state import load_trainer_state

    drawn = load_trainer_state(resolve_run_dir(tmp_path / "full"))["batches_drawn"]
    assert drawn > 12 and full["dropped_pairs"] == part["dropped_pairs"] == 2 * drawn - 24 - full["bad_samples"]


def test_resume_into_another_runs_folder_and_other_architecture(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *COMMON, "--steps", "2", "--output", str(a)]) == 0
    assert main(["train", *COMMON, "--steps", "1", "--output", str(b)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--steps", "3", "--resume", str(b), "--output", str(a)]) == 2
    assert "already holds another run's checkpoints" in capsys.readouterr().err
    arch = json.loads((Path(cliplab.__file__).parent / "archs" / "ViT-Tiny-32px.json").read_text())
    arch["vision"]["activation"] = "quick_gelu"  # same tensor shapes, other maths
    (tmp_path / "other.json").write_text(json.dumps(arch))
    assert main(["train", *COMMON, "--model", str(tmp_path / "other.json"), "--steps", "3", "--resume", "latest",
                 "--output", str(a)]) == 2
    assert "its architecture differs" in capsys.readouterr().err


def test_validation_set_has_its_own_format_and_is_checked_first(tmp_path, capsys):
    data = _csv(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "2", "--val-data", str(data), "--eval-every", "1",
                 "--output", str(run)]) == 0  # synthetic training, CSV validation
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [1, 2]
    capsys.readouterr()
    assert main(["train", *COMMON, "--steps", "2", "--val-data", str(tmp_path / "none.csv"),
                 "--output", str(tmp_path / "r2")]) == 2
    captured = capsys.readouterr()
    assert "none.csv" in captured.err and "training" not in captured.out  # refused before any step


def test_more_epochs_on_resume_extend_the_schedule(tmp_path, capsys):
    data = _csv(tmp_path / "data")  # 24 pairs: 3 steps an epoch at batch 8
    args = ["train", *COMMON, "--train-data", str(data), "--batch-size", "8", "--output", str(tmp_path / "run")]
    assert main([*args, "--epochs", "1"]) == 0
    assert resolve_run_dir(tmp_path / "run").name == "step-00000003"
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume", "latest"]) == 0
    assert "scheduled for 3 steps; --epochs 2 makes it 6" in capsys.readouterr().out
    assert resolve_run_dir(tmp_path / "run").name == "step-00000006"
    assert main([*args, "--epochs", "2", "--resume", "latest"]) == 0  # the same command again: nothing to do
    assert "nothing to train: the checkpoint is at step 6 of 6" in capsys.readouterr().out


def test_learned_tokenizer_sets_the_text_vocabulary(tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"a photo of a {c} {s}\n" for c in ("red", "green", "blue")
                                for s in ("circle", "square", "star")))
    assert main(["tokenizer", "train", "--input", str(captions), "--vocab-size", "560",
                 "--output", str(tmp_path / "tok.json")]) == 0
    args = ["train", *COMMON, "--steps", "2", "--tokenizer", str(tmp_path / "tok.json")]
    assert main([*args, "--output", str(tmp_path / "run")]) == 0
    model, _, tokenizer = cliplab.load(tmp_path / "run")
    assert tokenizer.vocab_size == model.cfg.text.vocab_size <= 560
    assert model.cfg.text.eot_token_id == tokenizer.eot_token_id == tokenizer.vocab_size - 1
    assert model.text.token_embedding.weight.shape[0] == tokenizer.vocab_size
    ids = tokenizer(["a photo of a red star"])
    assert int(ids.max()) == tokenizer.eot_token_id  # the pooled position is found in the learned ids
    capsys.readouterr()
    assert main([*args, "--init-from", str(tmp_path / "run"), "--output", str(tmp_path / "b")]) == 2
    assert "keeps its own" in capsys.readouterr().err


def test_learned_tokenizer_is_the_runs_own_copy(tmp_path, capsys):
    """The checkpoint keeps the tokenizer under its own name (a file called config.json must not overwrite
    the checkpoint's config); a resumed run reads that copy, and a changed file at the original path is
    refused."""
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"a {c} {s}\n" for c in ("red", "green", "blue") for s in ("circle", "star")))
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tmp_path / "other.txt").write_text("a purple heart\na yellow ring\n")
    for name, corpus in (("config.json", captions), ("other.json", tmp_path / "other.txt")):
        assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "540",
                     "--output", str(tok_dir / name)]) == 0
    run = tmp_path / "run"
    args = ["train", *COMMON, "--tokenizer", str(tok_dir / "config.json"), "--output", str(run)]
    assert main([*args, "--steps", "2", "--save-every", "1"]) == 0
    _, _, tokenizer = cliplab.load(run)
    assert tokenizer.decode(tokenizer(["a red star"])[0].tolist()) == "a red star"
    (tok_dir / "config.json").unlink()  # moved away: the run goes on with its copy
    assert main(["train", "--resume", "latest", "--steps", "3", "--output", str(run)]) == 0
    (tok_dir / "config.json").write_bytes((tok_dir / "other.json").read_bytes())  # another tokenizer there now
    capsys.readouterr()
    assert main(["train", "--resume", "latest", "--steps", "4", "--output", str(run)]) == 2
    assert "differs from the tokenizer the run was trained with" in capsys.readouterr().err
    other = tmp_path / "other"  # the same model, but a tokenizer whose ids for two words are swapped
    shutil.copytree(resolve_run_dir(run), other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["red</w>"], vocab["star</w>"] = vocab["star</w>"], vocab["red</w>"]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    capsys.readouterr()
    assert main(["interpolate", str(run), str(other), "--output", str(tmp_path / "mix")]) == 2
    assert "use different tokenizers" in capsys.readouterr().err
    assert main(["interpolate", str(run), str(run), "--output", str(tmp_path / "mix")]) == 0


def test_run_finishes_without_matplotlib(tmp_path, monkeypatch, capsys):
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the [train] extra were not installed
    assert main(["train", *COMMON, "--steps", "2", "--output", str(tmp_path / "run")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "curves.png").exists()
    assert resolve_run_dir(tmp_path / "run").name == "step-00000002"


def test_resume_keeps_the_runs_settings(tmp_path, capsys):
    """``--resume latest`` alone continues the run as it was set up (data, batch, lr, schedule); its own
    config.json can start a new run; changed settings are named."""
    data = _csv(tmp_path / "data")
    first = ["train", "--model", "ViT-Tiny-32px", "--train-data", str(data), "--batch-size", "8", "--lr", "2e-3",
             "--steps", "6", "--save-every", "2", "--workers", "0", "--seed", "3", "--warmup", "2", "log_every=1"]
    assert main([*first, "--output", str(tmp_path / "full")]) == 0
    assert main([*first, "--output", str(tmp_path / "part"), "--stop-after", "3"]) == 0
    assert main(["train", "--resume", "latest", "--output", str(tmp_path / "part")]) == 0
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "part"), "--steps", "8", "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "note: resuming with changed settings" in out and "optim.lr: 0.002 -> 0.001" in out
    assert main(["train", "--config", str(tmp_path / "full" / "config.json"), "--steps", "1",
                 "--output", str(tmp_path / "again")]) == 0  # a run's resolved config is a valid config


def test_empty_config_section_is_a_section(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("data:\n  # workers: 2\nsteps: 1\n")
    assert main(["train", *COMMON, "--config", str(tmp_path / "run.yaml"), "--output", str(tmp_path / "r")]) == 0
    assert main(["train", *COMMON, "--steps", "1", "data=3", "data.workers=0", "--output", str(tmp_path / "s")]) == 2
    assert "'data' is not a section" in capsys.readouterr().err
