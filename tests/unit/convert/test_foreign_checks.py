"""Foreign checkpoints that do not fit their config, odd sizes, half precision, and bad config values."""

import json

import pytest
import torch
from PIL import Image

import cliplab
from cliplab.api import load_model
from cliplab.checkpoint import save_checkpoint
from cliplab.cli.main import main
from cliplab.config import CLIPConfig, ConfigError, ModelConfig, TextTransformerConfig, ViTConfig, to_dict
from cliplab.convert.openai import to_openai
from cliplab.errors import CliplabError
from cliplab.model.build import create_model

transformers = pytest.importorskip("transformers")


def _vit(width=128, heads=2):
    cfg = ModelConfig(embed_dim=32, vision=ViTConfig(image_size=32, patch_size=16, width=width, layers=1, heads=heads,
                                                     activation="quick_gelu"),
                      text=TextTransformerConfig(width=width, heads=heads, layers=1, activation="quick_gelu"))
    torch.manual_seed(0)
    return cfg, create_model(cfg).eval()


def test_half_precision_state_dict_loads_as_float32(tmp_path):
    _, model = _vit()
    torch.save({k: v.half() for k, v in to_openai(model.state_dict()).items()}, tmp_path / "fp16.pt")
    ours, _, _ = load_model(tmp_path / "fp16.pt")
    assert {p.dtype for p in ours.parameters()} == {torch.float32}
    model.half().float()  # the same weights, rounded through fp16
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), model.encode_image(images), rtol=0, atol=0)


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_state_dict_that_does_not_fit_is_one_line(tmp_path, change):
    _, model = _vit()
    sd = to_openai(model.state_dict())
    if change == "extra":
        sd["visual.extra"] = torch.zeros(3)
    elif change == "missing":
        del sd["ln_final.bias"]
    else:
        sd["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(100, 128)
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(CliplabError, match=r"odd\.pt: tensor|odd\.pt: tensors do not match") as info:
        load_model(tmp_path / "odd.pt")
    assert "\n" not in str(info.value)


def test_narrow_tower_needs_the_architecture(tmp_path):
    cfg, model = _vit(width=32, heads=2)
    torch.save(to_openai(model.state_dict()), tmp_path / "w32.pt")
    with pytest.raises(CliplabError, match=r"w32\.pt: cannot infer the attention heads .* width 32 .*--arch"):
        load_model(tmp_path / "w32.pt")
    _, got, _ = load_model(tmp_path / "w32.pt", arch=cfg)
    assert got.model == cfg


def _hf(tmp_path, name, **vision):
    torch.manual_seed(0)
    vc = {**dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=1, image_size=32,
                 patch_size=16), **vision}
    cfg = transformers.CLIPConfig(projection_dim=32, vision_config=vc, text_config=dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=1))
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, model


def test_hf_mlp_size_that_is_no_round_ratio(tmp_path):
    path, hf = _hf(tmp_path, "odd", hidden_size=56, intermediate_size=115)
    ours, _, _ = load_model(path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=images)
        want = getattr(want, "pooler_output", want)
        torch.testing.assert_close(ours.encode_image(images), want, rtol=1e-5, atol=1e-5)


def test_hf_config_that_does_not_fit_its_weights(tmp_path, capsys):
    path, _ = _hf(tmp_path, "hf")
    data = json.loads((path / "config.json").read_text())
    data["vision_config"]["num_hidden_layers"] = 3
    (path / "config.json").write_text(json.dumps(data))
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # (after the progress bar of the HF save above)
    assert err.startswith(f"error: {path}: tensors do not match the config: ")
    data["text_config"] = None
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CliplabError, match=r"hf: config\.json is not a CLIPModel config"):
        load_model(path)


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("vision", "heads", 0, r"vision\.heads: must be positive, got 0"),
    ("vision", "patch_size", 0, r"vision\.patch_size: must be positive"),
    ("vision", "layers", "2", r"vision\.layers: expected int, got '2'"),
    ("text", "ln_eps", None, r"text\.ln_eps: expected float, got None"),
    (None, "embed_dim", "32", r"model\.embed_dim: expected int"),
])
def test_native_config_values_are_checked(tmp_path, section, key, value, message):
    cfg, model = _vit()
    path = save_checkpoint(model, CLIPConfig.for_model(cfg), tmp_path / "ckpt")
    data = to_dict(CLIPConfig.for_model(cfg))
    (data["model"][section] if section else data["model"])[key] = value
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CliplabError, match=message):
        load_model(path)
    with pytest.raises(ConfigError):
        ViTConfig(width=96, heads=True)  # a bool is not a count


def test_cli_path_errors_are_one_line(tmp_path, capsys):
    cfg, model = _vit()
    src = save_checkpoint(model, CLIPConfig.for_model(cfg), tmp_path / "ckpt")
    (tmp_path / "afile").write_text("x")
    assert main(["convert", str(src), str(tmp_path / "afile"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "afile" in err and err.count("\n") == 1


def test_bad_device_and_classify_defaults(tmp_path):
    cfg, model = _vit()
    path = save_checkpoint(model, CLIPConfig.for_model(cfg), tmp_path / "ckpt")
    with pytest.raises(CliplabError, match="device 'foo': not a device name"):
        cliplab.load(path, device="foo")
    loaded, preprocess, tokenizer = cliplab.load(path)
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 40), (30, 30, 200))]
    got = cliplab.classify(images, ["red", "blue"], model=loaded)
    assert got == cliplab.classify(images, ["red", "blue"], model=loaded, preprocess=preprocess, tokenizer=tokenizer)
    with pytest.raises(CliplabError, match="labels must be a list of strings"):
        cliplab.classify(images, "cat", model=loaded)
    with pytest.raises(CliplabError, match="top_k must be at least 1"):
        cliplab.classify(images, ["red", "blue"], model=loaded, top_k=0)
    assert cliplab.classify(images, ["red", "blue"], model=loaded, templates="{0}") == \
        cliplab.classify(images, ["red", "blue"], model=loaded, templates="{}")


def test_incomplete_folders_say_what_they_lack(tmp_path):
    cfg, model = _vit()
    ckpt = save_checkpoint(model, CLIPConfig.for_model(cfg), tmp_path / "ckpt")
    cases = {"run": ({"config.json": json.dumps({"train": {"model": "ViT-Tiny-32px"}})},
                     "a training run without a checkpoint yet"),
             "bad_json": ({"config.json": "{not json"}, "config.json: unreadable"),
             "no_weights": ({"config.json": (ckpt / "config.json").read_text()}, "model.safetensors is missing"),
             "no_config": ({"model.safetensors": (ckpt / "model.safetensors").read_bytes()},
                           "model.safetensors without the config.json")}
    for name, (files, message) in cases.items():
        (tmp_path / name).mkdir()
        for fname, content in files.items():
            target = tmp_path / name / fname
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
        with pytest.raises(CliplabError, match=message):
            load_model(tmp_path / name)
    with pytest.raises(CliplabError, match=r"cliplab weights without their config\.json"):
        load_model(tmp_path / "no_config" / "model.safetensors")


@pytest.mark.parametrize("content", [b"5", b"null", b'"a model"', '{"name": "caf\xe9"}'.encode("latin-1")])
def test_malformed_config_beside_weights_is_one_line(tmp_path, capsys, content):
    cfg, model = _vit()
    ckpt = save_checkpoint(model, CLIPConfig.for_model(cfg), tmp_path / "ckpt")
    (ckpt / "config.json").write_bytes(content)
    assert main(["convert", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "Traceback" not in err
