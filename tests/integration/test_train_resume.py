"""`cliplab train --resume`: exact continuation after a stop or a kill, settings kept, checkpoints kept safe."""

import json
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
from cliplab.train.state import load_trainer_state, resolve_run_dir
from tests.integration.helpers import COMMON, run_losses, tiny_csv

pytestmark = pytest.mark.integration


def test_resume_gives_identical_losses(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*COMMON, "--steps", "8", "--save-every", "3"]
    assert main(["train", *args, "--output", str(full)]) == 0
    assert main(["train", *args, "--output", str(part), "--stop-after", "5"]) == 0  # as if killed at step 5
    assert resolve_run_dir(part).name == "step-00000003"
    first = load_trainer_state(resolve_run_dir(part))["train_seconds"]  # the first session's training time
    assert main(["train", *args, "--output", str(part), "--resume", "latest"]) == 0
    assert run_losses(part) == run_losses(full)
    last = load_trainer_state(resolve_run_dir(part))["train_seconds"]
    assert 0 < first < last  # counted over both sessions
    summary = json.loads((part / "summary.json").read_text())["seconds"]
    assert summary >= round(last, 1), (first, last, summary)  # so is the summary


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


def test_augmented_csv_resumes_exactly_with_a_worker(tmp_path):
    """Random crops are drawn from (seed, epoch, row), not from the global generator that a resume and
    every new DataLoader worker reseed: default settings (augmentation on, one worker) resume exactly."""
    data = tiny_csv(tmp_path / "data")
    rng = torch.Generator().manual_seed(0)
    for png in data.parent.glob("*.png"):  # texture, so that different crops give different pixels
        Image.fromarray(torch.randint(0, 256, (36, 36, 3), generator=rng, dtype=torch.uint8).numpy()).save(png)
    args = ["train", "--model", "ViT-Tiny-32px", "--train-data", str(data), "--batch-size", "8", "--steps", "6",
            "--save-every", "2", "--workers", "1", "--seed", "2", "log_every=1"]
    assert main([*args, "--output", str(tmp_path / "full")]) == 0
    assert main([*args, "--output", str(tmp_path / "part"), "--stop-after", "3"]) == 0
    assert main(["train", "--resume", "latest", "--output", str(tmp_path / "part")]) == 0
    assert run_losses(tmp_path / "part") == run_losses(tmp_path / "full")


def test_pruning_never_removes_the_checkpoint_latest_names(tmp_path):
    """Resuming from an older step leaves later-named checkpoints; keep_last must not prune the new one."""
    run = tmp_path / "run"
    args = ["train", *COMMON, "--save-every", "2", "--output", str(run)]
    assert main([*args, "--steps", "8"]) == 0
    older = run / "checkpoints" / "step-00000004"
    assert main(["train", "--resume", str(older), "--output", str(run), "--keep-last", "1", "--stop-after", "7"]) == 0
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
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "1", "--output", str(tmp_path / "from")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "the checkpoint is at step 2, so --steps 1 leaves nothing to train (give more than 2 steps)")
    assert main(["train", "--resume", str(run), "--steps", "2", "--output", str(tmp_path / "from")]) == 0  # a rerun
    assert "nothing to train" in capsys.readouterr().out
    text = (tmp_path / "from" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert summary["final_loss"] is None and summary["steps"] == 2


def test_resume_with_another_global_batch_and_steps_with_epochs_are_said(tmp_path, capsys):
    run = tmp_path / "run"
    data = tiny_csv(tmp_path / "data")
    assert main(["train", *COMMON, "--train-data", str(data), "--steps", "2", "--epochs", "3",
                 "--output", str(run)]) == 0
    assert "--epochs 3 is not used" in capsys.readouterr().out
    assert main(["train", "--resume", "latest", "--steps", "3", "--batch-size", "8", "--output", str(run)]) == 0
    assert "trained with a global batch of 16; it goes on with 8" in capsys.readouterr().out


def test_resume_before_the_first_checkpoint_keeps_the_runs_settings(tmp_path, capsys):
    """Killed before its first checkpoint, a run folder has only its config.json: --resume latest starts
    afresh with those settings, not with the defaults (synthetic data)."""
    data = tiny_csv(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--train-data", str(data), "--steps", "2", "--output", str(run)]) == 0
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints" / ".tmp-step-00000002").mkdir(parents=True)  # a kill in the middle of the first save
    capsys.readouterr()
    assert main(["train", "--resume", "latest", "--output", str(run)]) == 0
    assert "starting from scratch" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["data"]["train_data"] == str(data) and saved["steps"] == 2


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
    assert run_losses(part) == run_losses(full) and len(run_losses(full)) == 14


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
    assert run_losses(tmp_path / "part") == run_losses(tmp_path / "full")
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


def test_more_epochs_on_resume_extend_the_schedule(tmp_path, capsys):
    data = tiny_csv(tmp_path / "data")  # 24 pairs: 3 steps an epoch at batch 8
    args = ["train", *COMMON, "--train-data", str(data), "--batch-size", "8", "--output", str(tmp_path / "run")]
    assert main([*args, "--epochs", "1"]) == 0
    assert resolve_run_dir(tmp_path / "run").name == "step-00000003"
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--resume", "latest"]) == 0
    assert "scheduled for 3 steps; --epochs 2 makes it 6" in capsys.readouterr().out
    assert resolve_run_dir(tmp_path / "run").name == "step-00000006"
    assert main([*args, "--epochs", "2", "--resume", "latest"]) == 0  # the same command again: nothing to do
    assert "nothing to train: the checkpoint is at step 6 of 6" in capsys.readouterr().out


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


def test_resume_keeps_the_runs_settings(tmp_path, capsys):
    """``--resume latest`` alone continues the run as it was set up (data, batch, lr, schedule); its own
    config.json can start a new run; changed settings are named."""
    data = tiny_csv(tmp_path / "data")
    first = ["train", "--model", "ViT-Tiny-32px", "--train-data", str(data), "--batch-size", "8", "--lr", "2e-3",
             "--steps", "6", "--save-every", "2", "--workers", "0", "--seed", "3", "--warmup", "2", "log_every=1"]
    assert main([*first, "--output", str(tmp_path / "full")]) == 0
    assert main([*first, "--output", str(tmp_path / "part"), "--stop-after", "3"]) == 0
    assert main(["train", "--resume", "latest", "--output", str(tmp_path / "part")]) == 0
    assert run_losses(tmp_path / "part") == run_losses(tmp_path / "full")
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "part"), "--steps", "8", "--lr", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "note: resuming with changed settings" in out and "optim.lr: 0.002 -> 0.001" in out
    assert main(["train", "--config", str(tmp_path / "full" / "config.json"), "--steps", "1",
                 "--output", str(tmp_path / "again")]) == 0  # a run's resolved config is a valid config


def test_resumed_fine_tuning_is_exact_after_its_base_moved(tmp_path):
    """A fine-tuning run resumes from its own checkpoint, not from the model it started from."""
    base = tmp_path / "base"
    assert main(["train", *COMMON, "--steps", "1", "--output", str(base)]) == 0
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*COMMON, "--init-from", str(base), "--steps", "5", "--save-every", "2", "--loss", "siglip"]
    assert main(["train", *args, "--output", str(full)]) == 0
    assert main(["train", *args, "--output", str(part), "--stop-after", "3"]) == 0
    base.rename(tmp_path / "moved")
    assert main(["train", *args, "--output", str(part), "--resume", "latest"]) == 0
    assert run_losses(part) == run_losses(full)


def test_shards_read_by_another_number_of_processes_are_said(tmp_path, capsys):
    from cliplab.data.shards import write_shards

    samples = []
    for i in range(16):
        Image.new("RGB", (36, 36), (i * 15, 90, 40)).save(tmp_path / f"{i}.png")
        samples.append((tmp_path / f"{i}.png", f"picture {i}"))
    write_shards(samples, tmp_path / "shards", per_shard=8)
    run = tmp_path / "run"
    args = [*COMMON, "--batch-size", "4", "--train-data", str(tmp_path / "shards" / "{00000..00001}.tar"),
            "--steps", "4", "--save-every", "2", "--output", str(run)]
    assert main(["train", *args, "--stop-after", "3"]) == 0  # as if killed after the checkpoint of step 2
    trainer = resolve_run_dir(run) / "trainer.pt"
    state = torch.load(trainer, weights_only=True)
    state["data_positions"] = state["data_positions"] * 2  # as if written by 2 processes
    torch.save(state, trainer)
    capsys.readouterr()
    assert main(["train", *args, "--resume", "latest"]) == 0
    assert "read its shards with 2 process(es), this one with 1: the shard stream starts again" in \
        capsys.readouterr().out


def test_resumed_fine_tuning_with_accumulation_is_bit_exact(tmp_path):
    """Gradient caching's first pass runs on the no-autograd path; loaded weights must sit in the same
    (aligned) memory whether they came from --init-from or from the run's own checkpoint, or MKL rounds
    differently and a resumed run drifts by ~1e-7."""
    from cliplab.convert.openai import to_openai

    torch.manual_seed(0)
    base = tmp_path / "openai.pt"  # read with torch.load; the resumed run reads its safetensors checkpoint
    torch.save(to_openai(cliplab.create_model("ViT-Tiny-32px").state_dict()), base)
    full, part = tmp_path / "full", tmp_path / "part"
    args = [*COMMON[2:], "--init-from", str(base), "--steps", "5", "--save-every", "1", "--accum-steps", "2",
            "--batch-size", "8"]  # COMMON without its --model: the checkpoint's own architecture
    assert main(["train", *args, "--output", str(full)]) == 0
    assert main(["train", *args, "--output", str(part), "--stop-after", "3"]) == 0
    assert main(["train", *args, "--output", str(part), "--resume", "latest"]) == 0
    assert run_losses(part) == run_losses(full)
    a, b = cliplab.load(full)[0].state_dict(), cliplab.load(part)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_optimizer_settings_take_effect_on_resume(tmp_path, capsys):
    """The optimizer's saved state carries its hyper-parameters; the run's own settings go back on top."""
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "2", "--output", str(run)]) == 0
    assert main(["train", "--resume", "latest", "--steps", "3", "--output", str(run), "optim.weight_decay=0.05",
                 "optim.eps=1e-3", "optim.betas=[0.5,0.6]"]) == 0
    assert "optim.weight_decay: 0.2 -> 0.05" in capsys.readouterr().out
    groups = load_trainer_state(resolve_run_dir(run))["optimizer"]["param_groups"]
    assert [(g["weight_decay"], g["eps"], tuple(g["betas"])) for g in groups] == \
        [(0.05, 1e-3, (0.5, 0.6)), (0.0, 1e-3, (0.5, 0.6))]


def test_a_time_budget_is_the_runs_and_more_steps_need_more_budget(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--steps", "100000", "--time-budget-minutes", "0.01", "--output", str(run)]) == 0
    first = json.loads((run / "summary.json").read_text())["steps"]
    assert 0 < first < 100000
    capsys.readouterr()
    assert main(["train", "--resume", "latest", "--output", str(run)]) == 0  # the same command again
    assert "nothing to train: the run used its 0.01-minute time budget or ended its plan" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["steps"] == first
    assert main(["train", "--resume", "latest", "--time-budget-minutes", "0.05", "--output", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] > first


def test_resuming_from_a_run_onto_other_data_reads_that_datas_format(tmp_path, capsys):
    """The saved settings hold the format the first run's data had (synthetic); new data brings its own."""
    assert main(["train", *COMMON, "--steps", "1", "--output", str(tmp_path / "synthetic")]) == 0
    data = tiny_csv(tmp_path / "data")
    assert main(["train", "--resume", str(tmp_path / "synthetic"), "--train-data", str(data), "--steps", "2",
                 "--output", str(tmp_path / "csv")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "csv" / "config.json").read_text())["train"]["data"]["format"] == "csv"
