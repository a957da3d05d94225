"""The real `cliplab train` on generated data: learning, determinism, options, data, errors."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cliplab
from cliplab.cli.main import main
from cliplab.train.state import resolve_run_dir
from tests.integration.helpers import COMMON, run_losses, tiny_csv

pytestmark = pytest.mark.integration


def test_learns_and_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert main(["train", *COMMON, "--steps", "12", "--lr", "2e-3", "--output", str(tmp_path / name)]) == 0
    a, b = run_losses(tmp_path / "a"), run_losses(tmp_path / "b")
    assert a == b and len(a) == 12
    assert sum(a[-3:]) / 3 < sum(a[:3]) / 3  # the loss goes down
    model, _, _ = cliplab.load(tmp_path / "a")  # a run folder loads its latest checkpoint
    assert model.cfg.vision.image_size == 32
    assert (tmp_path / "a" / "curves.png").exists() and (tmp_path / "a" / "summary.json").exists()


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


def test_validation_data_without_usable_pairs_is_said(tmp_path, capsys):
    (tmp_path / "val").mkdir()
    for i in range(20):  # images without captions
        Image.new("RGB", (36, 36), (i * 12, 0, 0)).save(tmp_path / "val" / f"{i}.png")
    assert main(["train", *COMMON, "--steps", "2", "--val-data", str(tmp_path / "val"), "--eval-every", "2",
                 "--output", str(tmp_path / "run")]) == 0
    assert "had 2 usable pairs, so no validation loss at step 2" in capsys.readouterr().out


def test_bf16_validation_loss_and_lit_fine_tuning(tmp_path):
    data = tiny_csv(tmp_path / "data")
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
        runs[name] = run_losses(out)
    for a, b in zip(runs["one"], runs["four"], strict=True):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a))


def test_accumulation_with_batch_norm_is_said_to_approximate(tmp_path, capsys):
    args = ["train", *COMMON, "--model", "RN-Tiny-64px", "--steps", "1", "--batch-size", "4", "--accum-steps", "2"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    assert "BatchNorm normalises each of the 2 pieces of a batch (2 micro-batches)" in capsys.readouterr().out
    assert main([*args, "--lock-image", "--output", str(tmp_path / "b")]) == 0  # a locked tower: running stats
    assert "BatchNorm" not in capsys.readouterr().out


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
    assert logged == pytest.approx(run_losses(run), rel=1e-6)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """`--compile` (torch.compile, inductor on CPU) trains to the same losses as eager, within float noise."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    args = [*COMMON, "--steps", "3", "data.augment=false"]
    assert main(["train", *args, "--output", str(eager)]) == 0
    assert main(["train", *args, "--compile", "--output", str(compiled)]) == 0
    assert run_losses(compiled) == pytest.approx(run_losses(eager), rel=1e-4)


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


def test_init_from_refuses_another_model(tmp_path, capsys):
    base = tmp_path / "base"
    assert main(["train", *COMMON, "--steps", "1", "--output", str(base)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--model", "ViT-Small-64px", "--init-from", str(base), "--steps", "1",
                 "--output", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model ViT-Small-64px: differs from the architecture of --init-from" in err[0]
    assert not (tmp_path / "ft").exists()
    resnet = tmp_path / "resnet"  # the default architecture's name given explicitly is checked too
    assert main(["train", *COMMON, "--model", "RN-Tiny-64px", "--steps", "1", "--output", str(resnet)]) == 0
    capsys.readouterr()
    assert main(["train", *COMMON, "--model", "ViT-Tiny-32px", "--init-from", str(resnet), "--steps", "1",
                 "--output", str(tmp_path / "ft")]) == 2
    assert "--model ViT-Tiny-32px: differs from the architecture" in capsys.readouterr().err
    assert main(["train", *[a for a in COMMON if a != "ViT-Tiny-32px" and a != "--model"], "--init-from",
                 str(resnet), "--steps", "1", "--output", str(tmp_path / "ft")]) == 0
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["model"] is None  # the checkpoint's


def test_locked_resnet_keeps_its_batch_norm_statistics(tmp_path):
    base = tmp_path / "base"
    assert main(["train", *COMMON, "--model", "RN-Tiny-64px", "--steps", "1", "--batch-size", "4",
                 "--output", str(base)]) == 0
    assert main(["train", *COMMON[2:], "--init-from", str(base), "--lock-image", "--steps", "2", "--batch-size", "4",
                 "--output", str(tmp_path / "lit")]) == 0  # COMMON[2:]: without its --model
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
    (["--train-data", "nowhere"], "nowhere: no such file or folder"),
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


def test_validation_set_has_its_own_format_and_is_checked_first(tmp_path, capsys):
    data = tiny_csv(tmp_path / "data")
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


def test_run_finishes_without_matplotlib(tmp_path, monkeypatch, capsys):

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the [train] extra were not installed
    assert main(["train", *COMMON, "--steps", "2", "--output", str(tmp_path / "run")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "curves.png").exists()
    assert resolve_run_dir(tmp_path / "run").name == "step-00000002"


def test_empty_config_section_is_a_section(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("data:\n  # workers: 2\nsteps: 1\n")
    assert main(["train", *COMMON, "--config", str(tmp_path / "run.yaml"), "--output", str(tmp_path / "r")]) == 0
    assert main(["train", *COMMON, "--steps", "1", "data=3", "data.workers=0", "--output", str(tmp_path / "s")]) == 2
    assert "'data' is not a section" in capsys.readouterr().err


def test_fp16_steps_that_overflow_are_logged_as_skipped_and_end_the_run_when_they_persist(tmp_path, capsys,
                                                                                          monkeypatch):
    """An fp16 step the grad scaler skips has no finite loss or gradient norm: the log says null (strict
    JSON), marks it skipped, and 20 such steps in a row stop the run. (fp16 itself needs CUDA: the step is
    stood in for.)"""
    from cliplab.train import loop

    calls = []

    def overflowing_step(*args, **kwargs):
        calls.append(1)
        finite = len(calls) <= 2
        return {"loss": 1.5 if finite else math.nan, "grad_norm": 3.0 if finite else math.nan,
                "skipped": not finite}

    monkeypatch.setattr(loop, "train_step", overflowing_step)
    assert main(["train", *COMMON, "--steps", "40", "--output", str(tmp_path / "r"), "log_every=1"]) == 2
    assert "the loss was not finite in 20 fp16 steps in a row" in capsys.readouterr().err
    assert len(calls) == 22

    def strict(token):
        raise ValueError(f"not JSON: {token}")

    rows = [json.loads(line, parse_constant=strict) for line in (tmp_path / "r" / "metrics.jsonl").read_text()
            .splitlines()]
    assert [(r["loss"], r["grad_norm"], r.get("skipped", False)) for r in rows] == \
        [(1.5, 3.0, False)] * 2 + [(None, None, True)] * 20


def test_siglip_fine_tuning_of_a_clip_model_starts_from_siglips_scale_and_bias(tmp_path):
    """CLIP's scale (100 for OpenAI's weights) with bias -10 would put every negative far above zero."""
    assert main(["train", *COMMON, "--steps", "1", "--output", str(tmp_path / "clip")]) == 0
    assert main(["train", *COMMON, "--init-from", str(tmp_path / "clip"), "--loss", "siglip", "--lr", "0",
                 "--steps", "1", "--output", str(tmp_path / "sig")]) == 0
    model, _, _ = cliplab.load(tmp_path / "sig")
    assert model.logit_scale.item() == pytest.approx(math.log(10)) and model.logit_bias.item() == -10.0
