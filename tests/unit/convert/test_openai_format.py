"""OpenAI / open_clip state dicts: names, shape inference, wrappers, and files that must not be trusted."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from tests.helpers import torchscript_archive

from cliplab.api import load_model
from cliplab.config import load_arch
from cliplab.convert.openai import from_openai, infer_config, to_openai
from cliplab.errors import CliplabError
from cliplab.model.build import create_model
from cliplab.weights import download


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-L-14-336", "RN50", "RN50x64", "RN101"])
def test_names_and_shape_inference_on_openai_architectures(arch):
    cfg = load_arch(arch)
    with torch.device("meta"):
        sd = create_model(cfg).state_dict()
    openai = to_openai(sd)
    assert "visual.proj" in openai if cfg.vision.type == "vit" else "visual.attnpool.c_proj.weight" in openai
    assert "text_projection" in openai and "transformer.resblocks.0.attn.in_proj_weight" in openai
    back = from_openai(openai)
    assert set(back) == set(sd) and all(back[k].shape == sd[k].shape for k in sd)
    assert infer_config(openai) == cfg


def test_mlp_width_and_open_clip_vision_heads_are_inferred(tmp_path):
    import dataclasses

    from cliplab.config import ModelConfig, TextTransformerConfig, ViTConfig

    # MLP widths are read from the weights, so other ratios (open_clip's ViT-g, ViT-bigG) load without --arch
    cfg = ModelConfig(embed_dim=64, vision=ViTConfig(image_size=32, patch_size=16, width=128, layers=1, heads=2,
                                                     mlp_ratio=336 / 128, activation="quick_gelu"),
                      text=TextTransformerConfig(width=128, heads=2, layers=1, mlp_ratio=200 / 128,
                                                 activation="quick_gelu"))
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    torch.save(to_openai(model.state_dict()), tmp_path / "mlp.pt")
    ours, got, _ = load_model(tmp_path / "mlp.pt")
    assert got.model == cfg
    with torch.no_grad():
        assert torch.equal(ours.encode_image(torch.ones(1, 3, 32, 32)), model.encode_image(torch.ones(1, 3, 32, 32)))
    # open_clip's ViT-H/14, ViT-g/14 and ViT-bigG/14 have 16 vision heads, not width / 64 (20, 22, 26)
    for width, layers, ratio, text_width in ((1280, 32, 4.0, 1024), (1408, 40, 6144 / 1408, 1024),
                                             (1664, 48, 8192 / 1664, 1280)):
        big = ModelConfig(embed_dim=1024, vision=ViTConfig(patch_size=14, width=width, layers=layers, heads=16,
                                                           mlp_ratio=ratio, activation="gelu"),
                          text=TextTransformerConfig(width=text_width, heads=text_width // 64, layers=2,
                                                     activation="gelu"))
        with torch.device("meta"):
            sd = to_openai(create_model(big).state_dict())
        assert infer_config(sd, activation="gelu") == big
    narrow = dataclasses.replace(cfg.vision, width=1280, heads=20)  # another tower of that width keeps the rule
    with torch.device("meta"):
        sd = to_openai(create_model(dataclasses.replace(cfg, vision=narrow)).state_dict())
    assert infer_config(sd, activation="quick_gelu").vision.heads == 20


def _small_openai_shaped(tmp_path):
    """A ViT with OpenAI's head size (64), small enough for a quick test."""
    from cliplab.config import ModelConfig, TextTransformerConfig, ViTConfig

    cfg = ModelConfig(embed_dim=64, vision=ViTConfig(image_size=32, patch_size=16, width=128, layers=2, heads=2,
                                                     activation="quick_gelu"),
                      text=TextTransformerConfig(width=128, heads=2, layers=2, activation="quick_gelu"))
    torch.manual_seed(0)
    return cfg, create_model(cfg).eval()


@pytest.mark.parametrize("wrap", ["plain", "module", "open_clip_training", "_orig_mod.module.", "module._orig_mod."])
def test_openai_pickles_load_with_identical_outputs(tmp_path, wrap):
    cfg, model = _small_openai_shaped(tmp_path)
    sd = to_openai(model.state_dict())
    if wrap == "module":
        sd = {f"module.{k}": v for k, v in sd.items()}
    if wrap.endswith("."):  # torch.compile'd (and DDP-wrapped) open_clip training
        sd = {f"{wrap}{k}": v for k, v in sd.items()}
    obj = {"epoch": 3, "state_dict": sd} if wrap == "open_clip_training" else sd
    torch.save(obj, tmp_path / "ckpt.pt")
    ours, cfg2, _ = load_model(tmp_path / "ckpt.pt")
    assert cfg2.model == cfg
    images = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73])
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), model.encode_image(images))
        assert torch.equal(ours.encode_text(ids), model.encode_text(ids))


def test_activation_of_a_bare_state_dict(tmp_path, capsys):
    """A bare state dict cannot tell QuickGELU (OpenAI) from GELU (open_clip's own models): the default
    is OpenAI's, said out loud, and ``activation=`` / ``--activation`` loads a GELU model exactly."""

    from cliplab.api import load
    from cliplab.cli.main import main
    from cliplab.convert.foreign import with_activation
    from cliplab.errors import CliplabWarning

    cfg, _ = _small_openai_shaped(tmp_path)
    gelu_cfg = with_activation(cfg, "gelu")
    assert gelu_cfg.vision.activation == gelu_cfg.text.activation == "gelu"
    torch.manual_seed(0)
    model = create_model(gelu_cfg).eval()
    torch.save(to_openai(model.state_dict()), tmp_path / "open_clip.pt")
    images = torch.randn(2, 3, 32, 32)
    with pytest.warns(CliplabWarning, match="does not record its activation"):
        assumed, _, _ = load(tmp_path / "open_clip.pt")
    ours, _, _ = load(tmp_path / "open_clip.pt", activation="gelu")
    with torch.no_grad():
        assert not torch.allclose(assumed.encode_image(images), model.encode_image(images))
        assert torch.equal(ours.encode_image(images), model.encode_image(images))
    with pytest.raises(CliplabError, match="unknown activation 'relu6'"):
        load(tmp_path / "open_clip.pt", activation="relu6")
    assert main(["convert", str(tmp_path / "open_clip.pt"), str(tmp_path / "native")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: ") and err.count("\n") == 1 and "--activation gelu" in err
    assert main(["convert", str(tmp_path / "open_clip.pt"), str(tmp_path / "native2"), "--activation", "gelu"]) == 0
    assert capsys.readouterr().err == ""
    converted, _, _ = load(tmp_path / "native2")
    assert converted.cfg == gelu_cfg
    with pytest.raises(CliplabError, match="records its architecture and activation"):
        load(tmp_path / "native2", activation="gelu")


def test_torchscript_archive_needs_the_opt_in(tmp_path):
    cfg, model = _small_openai_shaped(tmp_path)
    archive = torchscript_archive(to_openai(model.state_dict()))
    archive.save(str(tmp_path / "ViT-small.pt"))
    with pytest.raises(CliplabError, match=r"ViT-small\.pt: a TorchScript archive.*allow-unsafe-pickle"):
        load_model(tmp_path / "ViT-small.pt")
    ours, cfg2, _ = load_model(tmp_path / "ViT-small.pt", allow_unsafe=True)
    assert cfg2.model == cfg
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), model.encode_image(images))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cliplab-pwned",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_with_code_is_refused(tmp_path, writer):
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"weight": _Evil()}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"weight": _Evil()}, fh)
    if os.path.exists("/tmp/cliplab-pwned"):
        os.remove("/tmp/cliplab-pwned")
    expected = (r"refused to unpickle.*allow-unsafe-pickle" if writer == "torch.save"
                else r"not a PyTorch file \(a plain Python pickle")  # torch.load could not read it either
    with pytest.raises(CliplabError, match=r"evil\.pt: " + expected) as info:
        load_model(path)
    assert "\n" not in str(info.value)
    assert not os.path.exists("/tmp/cliplab-pwned")


def test_plain_pickle_is_not_sent_to_the_unsafe_flag(tmp_path):
    with open(tmp_path / "plain.pt", "wb") as fh:
        pickle.dump({"visual.proj": [1, 2]}, fh)  # harmless, but no torch.save file: unsafe loading cannot help
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"weight": _Evil()}, fh)
    if os.path.exists("/tmp/cliplab-pwned"):
        os.remove("/tmp/cliplab-pwned")
    for name in ("plain", "evil"):
        for unsafe in (False, True):  # not unpickled even with the opt-in: torch.load could not read it anyway
            with pytest.raises(CliplabError, match=rf"{name}\.pt: not a PyTorch file \(a plain Python pickle") as info:
                load_model(tmp_path / f"{name}.pt", allow_unsafe=unsafe)
            assert "allow-unsafe" not in str(info.value)
    assert not os.path.exists("/tmp/cliplab-pwned")


def test_corrupt_and_unknown_files(tmp_path):
    cfg, model = _small_openai_shaped(tmp_path)
    save_file({k: v.contiguous() for k, v in to_openai(model.state_dict()).items()}, str(tmp_path / "w.safetensors"))
    assert load_model(tmp_path / "w.safetensors")[1].model == cfg
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CliplabError, match=r"cut\.safetensors: corrupt or truncated"):
        load_model(tmp_path / "cut.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"\x00garbage")
    with pytest.raises(CliplabError, match=r"junk\.bin: not a PyTorch file"):
        load_model(tmp_path / "junk.bin")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CliplabError, match="not an OpenAI/open_clip CLIP state dict"):
        load_model(tmp_path / "other.pt")


def test_download_offline_fails_in_one_line(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(CliplabError, match=r"could not download ViT-B-32 \(openai\).*local checkpoint") as info:
        download("ViT-B-32", "openai", cache_dir=tmp_path)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())
    with pytest.raises(CliplabError, match="no pretrained weights 'laion'"):
        download("ViT-B-32", "laion", cache_dir=tmp_path)
    with pytest.raises(CliplabError, match=r"without published weights; cliplab\.create_model\('ViT-Tiny-32px'\)"):
        load_model("ViT-Tiny-32px")


def test_verified_download_is_converted_once_to_safetensors(tmp_path, monkeypatch):
    import hashlib
    import io
    import urllib.request

    from cliplab import weights

    cfg, model = _small_openai_shaped(tmp_path)
    archive = torchscript_archive({k: v.half() for k, v in to_openai(model.state_dict()).items()})
    buf = io.BytesIO()
    torch.jit.save(archive, buf)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    served = []

    def serve(url, timeout):
        served.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    monkeypatch.setitem(weights.PRETRAINED, "Small", {"openai": ("https://example.invalid/Small.pt", sha)})
    path = download("Small", cache_dir=tmp_path / "cache")
    assert path.name == "Small-openai.safetensors" and [p.name for p in path.parent.iterdir()] == [path.name]
    ours, got, _ = load_model(path)  # no allow_unsafe: the cache holds tensors only
    assert got.model == cfg and got.name == "Small-openai"
    model.half().float()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.encode_image(images), model.encode_image(images))
    assert download("Small", cache_dir=tmp_path / "cache") == path and len(served) == 1  # cached
    monkeypatch.setitem(weights.PRETRAINED, "Bad", {"openai": ("https://example.invalid/Bad.pt", "0" * 64)})
    with pytest.raises(CliplabError, match="checksum mismatch"):
        download("Bad", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]  # nothing left behind


@pytest.mark.parametrize(("key", "value", "message"), [
    ("text_projection", torch.zeros(128), r"tensor text_projection has shape \[128\]; .* has 2 dimensions"),
    ("ln_final.weight", torch.tensor(1.0), r"tensor ln_final\.weight has shape \[\]; .* has 1 dimension there"),
    ("visual.conv1.weight", torch.zeros(128, 3, 16), r"tensor visual\.conv1\.weight has shape \[128, 3, 16\]"),
])
def test_tensors_with_the_wrong_number_of_dimensions_are_one_line(tmp_path, capsys, key, value, message):
    from cliplab.checkpoint import CheckpointError
    from cliplab.cli.main import main

    sd = to_openai(create_model(load_arch("ViT-Tiny-32px")).state_dict())
    sd[key] = value
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt: " + message):
        load_model(tmp_path / "odd.pt", activation="gelu")
    assert main(["convert", str(tmp_path / "odd.pt"), str(tmp_path / "out"), "--activation", "gelu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def test_another_vocabulary_pools_as_openai_code_does():
    """OpenAI's and open_clip's code pools at the highest id; with another vocabulary than OpenAI's BPE its
    end-of-text id is unknown, so that rule is kept (and the config stays valid)."""
    import dataclasses

    arch = load_arch("ViT-Tiny-32px")
    small = dataclasses.replace(arch, text=dataclasses.replace(arch.text, vocab_size=1000, eot_token_id=999))
    with torch.device("meta"):
        sd = to_openai(create_model(small).state_dict())
    got = infer_config(sd, activation=arch.text.activation)
    assert (got.text.vocab_size, got.text.eot_token_id, got.text.pool) == (1000, 999, "argmax")
    with torch.device("meta"):
        assert infer_config(to_openai(create_model(arch).state_dict()), activation=arch.text.activation).text.pool \
            == "eot"
