"""What a run says about its data: pairs an epoch leaves out, bad samples met again, one validation pass."""

import json

import pytest
import torch
from PIL import Image

from cliplab.cli.main import main
from tests.integration.helpers import COMMON, tiny_csv

pytestmark = pytest.mark.integration


def _with_bad_rows(folder, n_good=18):
    folder.mkdir()
    rows = ["filepath,title"]
    for i in range(n_good):
        Image.new("RGB", (36, 36), (i * 13, 40, 90)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,colour {i}")
    (folder / "bad.png").write_bytes(b"garbage")
    rows += ["bad.png,a broken file", "missing.png,no such file"]
    (folder / "d.csv").write_text("\n".join(rows) + "\n")
    return folder / "d.csv"


def test_bad_samples_met_every_epoch_are_counted_once_each(tmp_path, capsys):
    data = _with_bad_rows(tmp_path / "data")  # 20 rows: two batches of 10 cover every row, every epoch
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--train-data", str(data), "--batch-size", "10", "--epochs", "2",
                 "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["bad_samples"], summary["bad_distinct"]) == (4, 2)
    out = capsys.readouterr().out
    assert "skipped 4 bad sample(s) (2 distinct, met again in later epochs)" in out
    assert "fill no whole batch" not in out


def test_pairs_an_epoch_leaves_out_are_said(tmp_path, capsys):
    data = tiny_csv(tmp_path / "data")  # 24 pairs
    assert main(["train", *COMMON, "--train-data", str(data), "--batch-size", "10", "--epochs", "1",
                 "--output", str(tmp_path / "run")]) == 0
    assert "an epoch is 2 whole batch(es); 4 pair(s) fill no whole batch" in capsys.readouterr().out


def test_a_fatal_bad_sample_is_logged_too(tmp_path, capsys):
    data = _with_bad_rows(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--train-data", str(data), "--batch-size", "10", "--steps", "2",
                 "--on-bad-sample", "error", "--output", str(run)]) == 2
    logged = [json.loads(line)["source"] for line in (run / "bad_samples.jsonl").read_text().splitlines()]
    err = capsys.readouterr().err
    assert logged and logged[0] in err


def test_shard_validation_is_one_pass(tmp_path):
    from cliplab.api import create_model
    from cliplab.config import CLIPConfig
    from cliplab.data.shards import write_shards
    from cliplab.tokenizer import get_tokenizer
    from cliplab.train.config import load_train_config
    from cliplab.train.validation import validation_hook

    data = tiny_csv(tmp_path / "data", n=14)
    write_shards(((tmp_path / "data" / f"{i}.png", f"shade {i}") for i in range(14)), tmp_path / "sh", 5)
    cfg = load_train_config(None, [f"data.val_data={tmp_path / 'sh'}/{{00000..00002}}.tar",
                                   f"data.train_data={data}", "batch_size=4"])
    model = create_model("ViT-Tiny-32px")
    hook = validation_hook(cfg, CLIPConfig.for_model(model.cfg), get_tokenizer(), torch.device("cpu"))
    seen = []
    model.register_forward_hook(lambda mod, args, out: seen.append(len(args[0])))
    result = hook(model, 1)
    assert sum(seen) == 14 and "val_loss" in result  # every pair once, none again
