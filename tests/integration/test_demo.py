"""`cliplab demo` end to end with a tiny budget: every report file exists and parses."""

import json

import pytest

import cliplab
from cliplab.cli.main import main

pytestmark = pytest.mark.integration


def test_demo_pipeline(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--steps", "20", "--batch-size", "32", "--minutes", "1",
                 "--workers", "0", "--eval-per-class", "1", "--n-retrieval", "40", "--json"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == 64 and report["chance_top1"] == pytest.approx(1 / 64)
    assert report["chance_top5"] == pytest.approx(5 / 64) and report["linear_probe"]["chance_top1"] == 1 / 64
    assert report["retrieval"]["chance_R@5"] == pytest.approx(5 * report["retrieval"]["chance_R@1"])
    for name in ("zeroshot_single", "zeroshot_ensemble"):
        for split in ("held_out", "seen"):
            assert 0.0 <= report[name][split]["top1"] <= 1.0
    assert report["zeroshot_ensemble"]["templates"] > report["zeroshot_single"]["templates"] == 1
    assert 0.0 <= report["retrieval"]["image_to_text_R@1"] <= 1.0 and "top1" in report["linear_probe"]
    assert report["steps"] == 20
    md = (out / "report.md").read_text()
    assert "Zero-shot classification" in md and "held-out" in md
    for png in ("curves.png", "similarity.png", "predictions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, preprocess, tokenizer = cliplab.load(out / "checkpoint")
    assert cliplab.classify([_image()], ["red circle", "blue star"], model, preprocess,
                            tokenizer)[0][0]["label"] in ("red circle", "blue star")


def _image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (220, 30, 30))
