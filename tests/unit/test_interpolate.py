"""``cliplab interpolate`` across checkpoint formats: the same architecture from OpenAI and HF files, and
OpenAI's TorchScript releases behind the unsafe-pickle opt-in."""

import json

import pytest
import torch

from cliplab.api import load_model
from cliplab.cli.main import main
from cliplab.config import CLIPConfig, ModelConfig, TextTransformerConfig, ViTConfig
from cliplab.convert.hf import export_hf
from cliplab.convert.openai import to_openai
from cliplab.model.build import create_model
from tests.helpers import torchscript_archive

pytest.importorskip("transformers")


def _openai_shaped(seed: int) -> tuple[ModelConfig, torch.nn.Module]:
    cfg = ModelConfig(embed_dim=64, vision=ViTConfig(image_size=32, patch_size=16, width=128, layers=1, heads=2,
                                                     activation="quick_gelu"),
                      text=TextTransformerConfig(width=128, heads=2, layers=1, activation="quick_gelu"))
    torch.manual_seed(seed)
    return cfg, create_model(cfg).eval()


def test_openai_file_and_hf_folder_of_one_architecture(tmp_path, capsys):
    cfg, a = _openai_shaped(0)
    _, b = _openai_shaped(1)
    torch.save(to_openai(a.state_dict()), tmp_path / "zero_shot.pt")
    export_hf(b, CLIPConfig.for_model(cfg), tmp_path / "fine_tuned")
    hf_cfg = json.loads((tmp_path / "fine_tuned" / "config.json").read_text())
    hf_cfg["logit_scale_init_value"] = 2.6592  # what transformers writes; OpenAI's files imply ln(1 / 0.07)
    (tmp_path / "fine_tuned" / "config.json").write_text(json.dumps(hf_cfg))
    assert main(["interpolate", str(tmp_path / "zero_shot.pt"), str(tmp_path / "fine_tuned"), "--alpha", "0.25",
                 "--output", str(tmp_path / "mix")]) == 0, capsys.readouterr().err
    mix, _, _ = load_model(tmp_path / "mix")
    sa, sb = a.state_dict(), b.state_dict()
    for key, value in mix.state_dict().items():
        torch.testing.assert_close(value, 0.75 * sa[key] + 0.25 * sb[key], rtol=0, atol=1e-6)


def test_hf_folder_with_a_bare_gelu_state_dict(tmp_path, capsys):
    """--activation is for the bare input: the HF folder says its own, and is not refused for it."""
    from cliplab.convert.foreign import with_activation

    cfg, _ = _openai_shaped(0)
    cfg = with_activation(cfg, "gelu")
    torch.manual_seed(0)
    a, b = create_model(cfg).eval(), create_model(cfg).eval()
    export_hf(a, CLIPConfig.for_model(cfg), tmp_path / "hf")
    torch.save(to_openai(b.state_dict()), tmp_path / "bare.pt")
    for order in ([tmp_path / "hf", tmp_path / "bare.pt"], [tmp_path / "bare.pt", tmp_path / "hf"]):
        out = tmp_path / f"mix_{order[0].name}"
        assert main(["interpolate", *map(str, order), "--activation", "gelu", "--output", str(out)]) == 0, \
            capsys.readouterr().err
        _, got, _ = load_model(out)
        assert got.model.text.activation == got.model.vision.activation == "gelu"


def test_torchscript_release_needs_the_opt_in(tmp_path, capsys):
    _, a = _openai_shaped(0)
    _, b = _openai_shaped(1)
    torchscript_archive(to_openai(a.state_dict())).save(str(tmp_path / "ViT-small.pt"))
    torch.save(to_openai(b.state_dict()), tmp_path / "tuned.pt")
    argv = ["interpolate", str(tmp_path / "ViT-small.pt"), str(tmp_path / "tuned.pt"), "--output", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "--allow-unsafe-pickle" in capsys.readouterr().err
    assert main([*argv, "--allow-unsafe-pickle", "--activation", "quick_gelu"]) == 0
    mix, got, _ = load_model(tmp_path / "m")
    assert got.model.vision.activation == "quick_gelu"
    torch.testing.assert_close(mix.visual.proj.weight, (a.visual.proj.weight + b.visual.proj.weight) / 2)


def test_refusals_say_what_differs(tmp_path, capsys):
    import dataclasses

    from cliplab.checkpoint import save_checkpoint

    cfg, a = _openai_shaped(0)
    save_checkpoint(a, CLIPConfig.for_model(cfg), tmp_path / "a")
    narrow = dataclasses.replace(cfg, embed_dim=32)
    save_checkpoint(create_model(narrow), CLIPConfig.for_model(narrow), tmp_path / "narrow")
    siglip = dataclasses.replace(cfg, init_logit_bias=-10.0)
    save_checkpoint(create_model(siglip), CLIPConfig.for_model(siglip), tmp_path / "siglip")
    capsys.readouterr()
    for other, said in (("narrow", "(embed_dim 64 vs 32)"),
                        ("siglip", "(only B has a logit bias (trained with --loss siglip))")):
        assert main(["interpolate", str(tmp_path / "a"), str(tmp_path / other), "--output", str(tmp_path / "m")]) == 2
        assert f"have different architectures {said}; cannot interpolate" in capsys.readouterr().err
