"""``cliplab eval`` end to end on a tiny random checkpoint and generated images."""

import json
from pathlib import Path

import pytest
from PIL import Image

import cliplab
from cliplab.checkpoint import save_checkpoint
from cliplab.cli.main import main
from cliplab.config import CLIPConfig
from cliplab.eval.zeroshot import load_classifier

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcli")
    model = cliplab.create_model("ViT-Tiny-32px")
    save_checkpoint(model, CLIPConfig.for_model(model.cfg), d / "ck.safetensors")
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0)}.items():
        (d / "data" / name).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (40, 40), rgb).save(d / "data" / name / f"{j}.png")
    (d / "cap.csv").write_text("filepath,title\ndata/red/0.png,a red square\ndata/red/0.png,red\n"
                               "data/green/1.png,a green square\n")
    return d


def test_zeroshot_report_plot_and_classifier(setup, capsys):
    d = setup
    code = main(["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
                 "--templates", "simple", "--output", str(d / "z.json"), "--confusion-png", str(d / "c.png"),
                 "--save-classifier", str(d / "clf.safetensors"), "--device", "cpu"])
    assert code == 0
    report = json.loads((d / "z.json").read_text())
    assert report["n"] == 6 and report["num_classes"] == 2 and 0.0 <= report["top1"] <= 1.0
    assert [row["name"] for row in report["per_class"]] == ["green", "red"]
    assert load_classifier(d / "clf.safetensors").classnames == ["green", "red"]
    assert (d / "c.png").stat().st_size > 0
    assert "top-1" in capsys.readouterr().out


def test_retrieval_and_linear_probe(setup, capsys):
    d = setup
    assert main(["eval", "retrieval", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "cap.csv"),
                 "--ks", "1", "2", "--output", str(d / "r.json"), "--device", "cpu"]) == 0
    report = json.loads((d / "r.json").read_text())
    assert report["num_images"] == 2 and report["num_texts"] == 3
    assert report["text_to_image_R@2"] == 1.0  # two images: every caption finds its image within rank 2
    assert main(["eval", "linear-probe", "--checkpoint", str(d / "ck.safetensors"), "--train", str(d / "data"),
                 "--test", str(d / "data"), "--shots", "1", "--seeds", "0", "1", "--device", "cpu"]) == 0
    assert "1-shot" in capsys.readouterr().out


def test_user_mistake_is_one_line(setup, capsys):
    d = setup
    code = main(["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
                 "--classnames", "imagenet", "--device", "cpu"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("1000 class names given for 2 classes")


def test_json_last_line_and_saved_classifier(setup, capsys):
    d = setup
    base = ["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
            "--device", "cpu", "--json"]
    assert main([*base, "--templates", "simple", "--save-classifier", str(d / "k.safetensors")]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*base, "--load-classifier", str(d / "k.safetensors"), "--output-json", str(d / "k.json")]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["top1"] == first["top1"] and second["per_class"] == first["per_class"]
    assert json.loads((d / "k.json").read_text())["top1"] == first["top1"]


def test_saved_classifier_belongs_to_its_text_tower(setup, tmp_path, capsys):
    d = setup
    torch = pytest.importorskip("torch")
    base = ["eval", "zeroshot", "--data", str(d / "data"), "--templates", "simple", "--device", "cpu"]
    assert main([*base, "--checkpoint", str(d / "ck.safetensors"), "--save-classifier", str(tmp_path / "k.st")]) == 0
    model, _, _ = cliplab.load(d / "ck.safetensors")
    with torch.no_grad():
        model.visual.proj.weight.mul_(2)  # another image tower, the same text tower: the classifier fits
    save_checkpoint(model, CLIPConfig.for_model(model.cfg), tmp_path / "lit.safetensors")
    assert main([*base, "--checkpoint", str(tmp_path / "lit.safetensors"), "--load-classifier",
                 str(tmp_path / "k.st")]) == 0
    with torch.no_grad():
        model.text.proj.weight.mul_(2)
    save_checkpoint(model, CLIPConfig.for_model(model.cfg), tmp_path / "other.safetensors")
    capsys.readouterr()
    assert main([*base, "--checkpoint", str(tmp_path / "other.safetensors"), "--load-classifier",
                 str(tmp_path / "k.st")]) == 2
    err = capsys.readouterr().err.strip()
    assert "built with another text tower" in err and "\n" not in err


def test_linear_probe_maps_test_classes_by_name(setup, tmp_path, capsys):
    d = setup
    (tmp_path / "test" / "red").mkdir(parents=True)  # only the second of the training classes
    for j in range(2):
        Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "test" / "red" / f"{j}.png")
    args = ["eval", "linear-probe", "--checkpoint", str(d / "ck.safetensors"), "--train", str(d / "data"),
            "--device", "cpu", "--json"]
    assert main([*args, "--test", str(d / "data")]) == 0
    full = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main([*args, "--test", str(tmp_path / "test"), "--shots", "1,2"]) == 0
    out = capsys.readouterr().out
    part = json.loads(out.splitlines()[-1])
    assert full["accuracy"] == part["accuracy"] == 1.0  # red is label 1 in --train, label 0 in --test alone
    assert "1-shot" in out and "2-shot" in out


def test_classnames_object_renames_by_key_and_per_class_table(setup, tmp_path, capsys):
    d = setup
    (tmp_path / "names.json").write_text(json.dumps({"red": "crimson", "green": "emerald"}))
    assert main(["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
                 "--templates", "simple", "--classnames", str(tmp_path / "names.json"), "--device", "cpu",
                 "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    report = json.loads(out[-1])
    assert [r["name"] for r in report["per_class"]] == ["emerald", "crimson"]  # folders green, red
    assert any(line.startswith("per-class recall") for line in out)
    assert any(line.strip().startswith("crimson") and line.rstrip().endswith("%") for line in out)


def test_retrieval_list_captions_and_path_spellings(setup, tmp_path):
    d = setup
    (d / "list.csv").write_text('filepath,title\ndata/red/0.png,"[""a red square"", ""red""]"\n'
                                "./data/green/1.png,a green square\n")
    assert main(["eval", "retrieval", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "list.csv"),
                 "--output", str(tmp_path / "r.json"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_images"] == 2 and report["num_texts"] == 3


@pytest.mark.parametrize(("extra", "message"), [
    (["--confusion-png", "c.xyz"], "cannot write a .xyz figure"),
    (["--templates", "TPL"], "needs exactly one plain {} placeholder"),
    (["--load-classifier", "CLF"], "built for classes"),
])
def test_zeroshot_mistakes_are_one_line(setup, tmp_path, capsys, extra, message):
    d = setup
    (tmp_path / "tpl.txt").write_text("a {0.real}\n")
    from cliplab.eval.zeroshot import save_classifier

    save_classifier(tmp_path / "clf.safetensors", __import__("torch").zeros(128, 3), ["cat", "dog", "fox"], "{}")
    extra = [{"TPL": str(tmp_path / "tpl.txt"), "CLF": str(tmp_path / "clf.safetensors")}.get(e, e) for e in extra]
    code = main(["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
                 "--templates", "simple", "--device", "cpu", *extra])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_worker_errors_are_one_line(setup, tmp_path, capsys):
    d = setup
    (tmp_path / "data" / "red").mkdir(parents=True)
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "data" / "red" / "0.png")
    (tmp_path / "data" / "red" / "bad.png").write_text("not an image")
    args = ["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(tmp_path / "data"),
            "--templates", "simple", "--device", "cpu", "--workers", "1"]
    assert main([*args, "--on-bad-sample", "error"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.png: unreadable image" in err and "\n" not in err


def test_unreadable_images_are_left_out_counted_and_listed(setup, tmp_path, capsys):
    """One corrupt file stopped a whole evaluation, after all the work before it; now it is left out of the
    figures, counted and listed in the report (zero-shot, linear probe), and the rest is evaluated."""
    d = setup
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for j in range(2):
            Image.new("RGB", (40, 40), rgb).save(tmp_path / "data" / name / f"{j}.png")
    (tmp_path / "data" / "red" / "bad.png").write_text("not an image")
    (tmp_path / "data" / "green" / "cut.png").write_bytes((tmp_path / "data" / "green" / "0.png").read_bytes()[:60])
    common = ["--checkpoint", str(d / "ck.safetensors"), "--device", "cpu", "--json", "--batch-size", "2"]
    assert main(["eval", "zeroshot", *common, "--data", str(tmp_path / "data"), "--templates", "simple",
                 "--workers", "1"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["n"] == 4 and report["skipped"] == 2
    assert sorted(Path(s["source"]).name for s in report["skipped_samples"]) == ["bad.png", "cut.png"]
    assert "skipped 2 unreadable or missing image(s)" in captured.out and "bad.png: unreadable image" in captured.err
    assert main(["eval", "linear-probe", *common, "--train", str(tmp_path / "data"),
                 "--test", str(tmp_path / "data")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_train"] == report["n_test"] == 4 and report["skipped"] == 4  # each bad file in both sets


def test_csv_labels_must_not_be_empty(setup, tmp_path):
    d = setup
    (d / "lab.csv").write_text("\ufefffilepath,label\ndata/red/0.png,red\ndata/red/1.png,\n")
    from cliplab.errors import CliplabError
    from cliplab.eval.datasets import LabelCsvDataset

    with pytest.raises(CliplabError, match=r"lab\.csv:3: empty 'label'"):
        LabelCsvDataset(d / "lab.csv", transform=lambda im: im)


def test_batch_size_is_checked_by_the_parser(setup, capsys):
    d = setup
    with pytest.raises(SystemExit) as info:
        main(["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
              "--batch-size", "0"])
    assert info.value.code == 2 and "argument --batch-size: 0 is below 1" in capsys.readouterr().err


def test_probe_refuses_test_classes_the_training_set_lacks(setup, tmp_path, capsys):
    d = setup
    for name in ("Red", "green"):  # "Red" is not "red"
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "test" / name / "0.png")
    assert main(["eval", "linear-probe", "--checkpoint", str(d / "ck.safetensors"), "--train", str(d / "data"),
                 "--test", str(tmp_path / "test"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "['Red']" in err and "\n" not in err


def test_long_captions_are_cut_and_counted(setup, tmp_path, capsys):
    d = setup
    long = " ".join(["red"] * 100)  # over the 32-token context
    (d / "long.csv").write_text(f"filepath,title\ndata/red/0.png,{long}\ndata/green/1.png,a green square\n")
    assert main(["eval", "retrieval", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "long.csv"),
                 "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["truncated_captions"] == 1
    assert "1 cut to the model's 32 tokens" in out  # ViT-Tiny-32px's text context


def test_class_names_with_dollar_signs_plot(setup, tmp_path):
    d = setup
    (tmp_path / "names.json").write_text(json.dumps({"red": "r $^$ x", "green": "$5 bill"}))
    assert main(["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
                 "--templates", "simple", "--classnames", str(tmp_path / "names.json"), "--device", "cpu",
                 "--confusion-png", str(tmp_path / "c.png"), "--output", str(tmp_path / "z.json")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "z.json").exists()


def test_csv_image_paths_are_trimmed_like_retrieval(setup):
    from cliplab.eval.datasets import LabelCsvDataset

    d = setup
    (d / "spaced.csv").write_text("filepath,label\n data/red/0.png ,red\ndata/green/1.png,green\n")
    ds = LabelCsvDataset(d / "spaced.csv", transform=lambda im: im)
    assert ds[0][0].size == (40, 40)  # the file is found despite the spaces around its path


def test_probe_says_when_c_was_not_searched(setup, tmp_path, capsys):
    d = setup
    for name, rgb in {"red": (255, 0, 0), "green": (0, 255, 0)}.items():  # one training image per class
        (tmp_path / "one" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), rgb).save(tmp_path / "one" / name / "0.png")
    assert main(["eval", "linear-probe", "--checkpoint", str(d / "ck.safetensors"), "--train", str(tmp_path / "one"),
                 "--test", str(d / "data"), "--device", "cpu"]) == 0
    assert "C was not searched (fixed at 1)" in capsys.readouterr().out


def test_probe_compares_the_classes_that_have_images(setup, tmp_path, capsys):
    d = setup
    for split, name, count in [("train", "red", 2), ("train", "green", 2), ("train", "blue", 0),
                               ("test", "blue", 1), ("test", "red", 1), ("empty", "red", 1), ("empty", "fox", 0)]:
        (tmp_path / split / name).mkdir(parents=True)
        for j in range(count):
            Image.new("RGB", (40, 40), (0, 0, 255) if name == "blue" else (255, 0, 0)).save(
                tmp_path / split / name / f"{j}.png")
    base = ["eval", "linear-probe", "--checkpoint", str(d / "ck.safetensors"), "--device", "cpu"]
    # an empty training folder is no training class: its test images cannot be scored
    assert main([*base, "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test")]) == 2
    err = capsys.readouterr().err.strip()
    assert "test classes with no training images: ['blue']" in err and "\n" not in err
    # an empty test folder asks nothing of the training set
    assert main([*base, "--train", str(d / "data"), "--test", str(tmp_path / "empty"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n_test"] == 1


@pytest.mark.parametrize(("task", "header", "message"), [
    ("retrieval", b"filepath,title", "bad.csv:3: caption is not valid UTF-8"),
    ("zeroshot", b"filepath,label", "bad.csv:3: label is not valid UTF-8"),
])
def test_non_utf8_csv_cells_are_one_line_errors(setup, tmp_path, capsys, task, header, message):
    d = setup
    (d / "bad.csv").write_bytes(header + b"\ndata/red/0.png,red\ndata/green/1.png,gr\xfcn\n")
    extra = ["--templates", "simple", "--confusion-png", str(tmp_path / "c.png")] if task == "zeroshot" else []
    assert main(["eval", task, "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "bad.csv"),
                 "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {d / message}"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_retrieval_missing_image_names_the_row(setup, capsys, workers):
    d = setup
    (d / "miss.csv").write_text("filepath,title\ndata/red/0.png,red\ndata/red/gone.png,a lost square\n")
    args = ["eval", "retrieval", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "miss.csv"),
            "--device", "cpu", "--workers", workers, "--json"]
    assert main([*args, "--on-bad-sample", "error"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {d / 'miss.csv'}:3: image ") and "gone.png does not exist" in err
    assert "\n" not in err
    assert main(args) == 0  # skipped by default: the image leaves with its caption, and the report says so
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["num_images"] == 1 and report["num_texts"] == 1 and report["skipped"] == 1
    assert report["skipped_samples"][0]["source"] == f"{d / 'miss.csv'}:3"
    assert "gone.png does not exist" in captured.err


def test_loaded_classifier_needs_no_templates(setup, tmp_path, capsys):
    d = setup
    (tmp_path / "tpl.txt").write_text("no placeholder\n")
    base = ["eval", "zeroshot", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "data"),
            "--device", "cpu"]
    assert main([*base, "--templates", "simple", "--save-classifier", str(tmp_path / "k.safetensors")]) == 0
    assert main([*base, "--templates", str(tmp_path / "tpl.txt"),
                 "--load-classifier", str(tmp_path / "k.safetensors")]) == 0
    assert "1 templates" in capsys.readouterr().out  # the saved classifier's own


@pytest.mark.parametrize(("task", "flag"), [
    ("zeroshot", "--output"), ("zeroshot", "--output-json"), ("zeroshot", "--confusion-png"),
    ("zeroshot", "--save-classifier"), ("retrieval", "--output-json"), ("linear-probe", "--output"),
])
def test_output_paths_are_checked_before_any_work(setup, tmp_path, capsys, task, flag):
    d = setup
    data = {"zeroshot": ["--data", str(d / "data")], "retrieval": ["--data", str(d / "cap.csv")],
            "linear-probe": ["--train", str(d / "data"), "--test", str(d / "data")]}[task]
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("")
    # no such checkpoint: the error must come before the model is loaded
    base = ["eval", task, "--checkpoint", str(tmp_path / "none.safetensors"), *data, "--device", "cpu"]
    taken, under_file = tmp_path / "taken", tmp_path / "file" / "out.png"
    assert main([*base, flag, str(taken)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {taken}: is a directory (give a file name to write)"
    assert main([*base, flag, str(under_file)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {under_file}: {tmp_path / 'file'} is a file, not a folder"


@pytest.mark.parametrize(("task", "extra", "message"), [
    ("zeroshot", ["--save-classifier", "CK"], "CK: is the --checkpoint input; write --save-classifier elsewhere"),
    ("zeroshot", ["--output", "NAMES", "--classnames", "NAMES"], "NAMES: is the --classnames input"),
    ("zeroshot", ["--output-json", "DATA/r.json"], "DATA/r.json: is inside the --data folder DATA; write --output"),
    ("zeroshot", ["--output", "c.png", "--confusion-png", "c.png"], "c.png: given to both --output and "
                                                                    "--confusion-png"),
    ("zeroshot", ["--load-classifier", "CLF", "--save-classifier", "CLF"], "CLF: is the --load-classifier input"),
    ("retrieval", ["--output", "CAP"], "CAP: is the --data input"),
    ("linear-probe", ["--output", "DATA/red/0.png"], "is inside the --train folder DATA"),
])
def test_outputs_never_replace_inputs(setup, tmp_path, capsys, task, extra, message):
    d = setup
    (tmp_path / "names.txt").write_text("green\nred\n")
    (tmp_path / "clf.safetensors").write_bytes(b"a classifier")
    paths = {"CK": str(d / "ck.safetensors"), "NAMES": str(tmp_path / "names.txt"), "DATA": str(d / "data"),
             "CAP": str(d / "cap.csv"), "CLF": str(tmp_path / "clf.safetensors"), "c.png": str(tmp_path / "c.png")}

    def spell(text: str) -> str:
        for name, path in paths.items():
            text = text.replace(name, path)
        return text

    data = {"zeroshot": ["--data", "DATA"], "retrieval": ["--data", "CAP"],
            "linear-probe": ["--train", "DATA", "--test", "DATA"]}[task]
    inputs = [Path(p) for p in paths.values() if Path(p).is_file()]
    before = [p.stat().st_mtime_ns for p in inputs]
    assert main(["eval", task, "--device", "cpu", *map(spell, ["--checkpoint", "CK", *data, *extra])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and spell(message) in err and "\n" not in err
    assert [p.stat().st_mtime_ns for p in inputs] == before and not (tmp_path / "c.png").exists()


def test_probe_seeds_and_shots_are_checked_before_any_work(setup, tmp_path, capsys):
    d = setup
    base = ["eval", "linear-probe", "--checkpoint", str(tmp_path / "none.safetensors"), "--train", str(d / "data"),
            "--test", str(d / "data"), "--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        main([*base, "--shots", "2", "--seeds", "-1"])
    assert info.value.code == 2 and "argument --seeds: -1 is below 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([*base, "--shots"])  # no k: not a silent "no few-shot probe"
    assert info.value.code == 2 and "argument --shots: expected at least one argument" in capsys.readouterr().err
    assert main([*base, "--shots", ","]) == 2
    assert capsys.readouterr().err.strip() == "error: --shots: no k given (e.g. --shots 1,2,4,8,16)"


def test_retrieval_with_a_caption_shared_by_images_does_not_depend_on_the_batch_size(setup, tmp_path):
    """The same caption on several images was embedded once per row, in different batches, so its copies
    differed in the last bits and ties fell by chance: the metrics changed with --batch-size."""
    import numpy as np

    d = setup
    rng = np.random.default_rng(3)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"noise{i}.png")
        n = rng.integers(1, 4)
        rows += [(f"noise{i}.png", f"caption {rng.integers(0, 30)} of something {j}") for j in range(n)]
    (d / "shared.csv").write_text("filepath,title\n" + "".join(f"{a},{b}\n" for a, b in rows))
    assert len({b for _, b in rows}) < len(rows)  # some captions belong to several images
    reports = []
    for bs in (1, 5, 64):
        out = tmp_path / f"r{bs}.json"
        assert main(["eval", "retrieval", "--checkpoint", str(d / "ck.safetensors"), "--data", str(d / "shared.csv"),
                     "--batch-size", str(bs), "--output", str(out), "--device", "cpu"]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0] == reports[1] == reports[2]


def test_linear_probe_matches_classes_by_the_names_given(setup, tmp_path, capsys):
    """ImageNet's usual layout: WordNet-id folders for training, a CSV of class indices for testing, one list
    of names for both. The probe matched folder names against CSV labels and refused it."""
    import shutil

    d = setup
    for wnid, colour in (("n01", "red"), ("n02", "green")):
        shutil.copytree(d / "data" / colour, tmp_path / "train" / wnid)
    (tmp_path / "names.txt").write_text("red\ngreen\n")
    rows = [(f"{d}/data/{c}/{j}.png", k) for k, c in enumerate(("red", "green")) for j in range(3)]
    (tmp_path / "val.csv").write_text("filepath,label\n" + "".join(f"{p},{k}\n" for p, k in rows))
    args = ["eval", "linear-probe", "--checkpoint", str(d / "ck.safetensors"), "--train", str(tmp_path / "train"),
            "--test", str(tmp_path / "val.csv"), "--device", "cpu", "--json"]
    assert main([*args, "--classnames", str(tmp_path / "names.txt")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_test"] == 6 and report["accuracy"] == 1.0  # one colour per class: the probe separates them
    assert main(args) == 2  # without names, n01 and 0 are different classes: said
    assert "matched by their folder names or CSV labels" in capsys.readouterr().err
