"""``cliplab eval`` end to end on a tiny random checkpoint and generated images."""

import json

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
