"""Parity with transformers.CLIPModel on shared random weights, and exact round trips."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cliplab.api import load_model
from cliplab.cli.main import main
from cliplab.config import CLIPConfig, PreprocessConfig, load_arch
from cliplab.convert.foreign import load_foreign
from cliplab.convert.hf import export_hf
from cliplab.errors import CliplabError, CliplabWarning
from cliplab.model.build import create_model
from cliplab.transforms import Preprocess

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "b32": dict(projection_dim=512, vision_config={}, text_config={}),  # ViT-B/32 defaults, quick_gelu
    "small-gelu": dict(projection_dim=48, vision_config=dict(hidden_size=96, intermediate_size=200,
                       num_attention_heads=3, num_hidden_layers=2, image_size=48, patch_size=16, hidden_act="gelu"),
                       text_config=dict(hidden_size=64, intermediate_size=256, num_attention_heads=2,
                                        num_hidden_layers=3, max_position_embeddings=40, hidden_act="gelu")),
    "tiny-quick": dict(projection_dim=32, vision_config=dict(hidden_size=64, intermediate_size=256,
                       num_attention_heads=4, num_hidden_layers=1, image_size=32, patch_size=8),
                       text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                        num_hidden_layers=2, max_position_embeddings=77)),
}


def _tokens(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        k = 2 + (7 * i) % (length - 3)
        ids[i, 0] = 49406
        ids[i, 1 : k + 1] = torch.randint(1, 49400, (k,), generator=g)
        ids[i, k + 1] = 49407
    return ids


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(**CONFIGS[request.param])
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # OpenAI's trained value: ln(100) rounded up to fp16, so exp() is just over 100
        model.logit_scale.fill_(4.60546875)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return path, model


@torch.no_grad()
def test_outputs_match_transformers(hf_dir):
    path, hf = hf_dir
    ours, cfg, _ = load_model(path)
    s, L = cfg.model.vision.image_size, cfg.model.text.context_length
    images = torch.randn(4, 3, s, s, generator=torch.Generator().manual_seed(1))
    ids = _tokens(5, L)
    ref = hf(input_ids=ids, pixel_values=images)
    out = ours(images, ids)
    assert _rel(out.image_embeds, ref.image_embeds) <= 1e-5
    assert _rel(out.text_embeds, ref.text_embeds) <= 1e-5
    assert _rel(out.logits_per_image, ref.logits_per_image) <= 1e-5
    assert torch.equal(out.logits_per_image.argmax(-1), ref.logits_per_image.argmax(-1))
    assert _rel(ours.encode_image(images), hf.get_image_features(pixel_values=images).pooler_output) <= 1e-5


@torch.no_grad()
def test_round_trip_through_hf_is_exact(hf_dir, tmp_path):
    path, hf = hf_dir
    ours, cfg, _ = load_model(path)
    export_hf(ours, cfg, tmp_path / "again")
    back, cfg2, _ = load_model(tmp_path / "again")
    assert cfg2.model == cfg.model
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    hf2 = transformers.CLIPModel.from_pretrained(tmp_path / "again").eval()  # no missing/unexpected keys
    for k, v in hf.state_dict().items():
        assert torch.equal(hf2.state_dict()[k], v), k


def test_convert_cli(hf_dir, tmp_path):
    path, _ = hf_dir
    assert main(["convert", str(path), str(tmp_path / "native")]) == 0
    cfg, sd = load_foreign(path)
    ours, cfg2, _ = load_model(tmp_path / "native")
    assert cfg2.model == cfg.model and all(torch.equal(ours.state_dict()[k], v) for k, v in sd.items())
    assert main(["convert", str(path), str(tmp_path / "out.safetensors"), "--format", "hf"]) == 2
    assert not (tmp_path / "out.safetensors").exists()  # a HF model is a folder: refused, nothing made



@pytest.mark.parametrize("interpolation,mode", [("bilinear", "squash"), ("bicubic", "squash"), ("nearest", "shortest")])
def test_export_keeps_the_preprocessing(tmp_path, interpolation, mode):
    arch = load_arch("ViT-Tiny-32px")
    pre = PreprocessConfig(image_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation=interpolation,
                           resize_mode=mode)
    export_hf(create_model(arch), dataclasses.replace(CLIPConfig.for_model(arch), preprocess=pre), tmp_path / "hf")
    back, _ = load_foreign(tmp_path / "hf")
    assert back.preprocess == pre
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    theirs = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "hf")(image, return_tensors="pt")
    ours = Preprocess(pre)(image)  # (3, 32, 32)
    assert theirs["pixel_values"].shape == (1, *ours.shape)
    assert (theirs["pixel_values"][0] - ours).abs().max() < 1e-5


def test_export_refuses_a_logit_bias(tmp_path):
    arch = dataclasses.replace(load_arch("ViT-Tiny-32px"), init_logit_bias=-10.0)  # SigLIP-trained
    with pytest.raises(CliplabError, match="logit bias"):
        export_hf(create_model(arch), CLIPConfig.for_model(arch), tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


_LEGACY = {"feature_extractor_type": "CLIPFeatureExtractor", "size": 32, "crop_size": 32, "do_center_crop": True,
           "do_resize": True, "do_normalize": True, "resample": 3, "image_mean": [0.5, 0.4, 0.3],
           "image_std": [0.2, 0.25, 0.3]}


@pytest.mark.parametrize("changes", [
    {},  # the older CLIPFeatureExtractor file: bare numbers for size and crop_size
    {"do_normalize": False},
    {"do_rescale": False},
    {"rescale_factor": 1 / 127.5, "image_mean": [1, 1, 1], "image_std": 1.0},  # pixels to [-1, 1]; one std for all
    {"do_rescale": False, "image_mean": 127.5, "image_std": [127.5, 60, 70]},
    {"size": {"height": 32, "width": 32}, "crop_size": {"height": 32, "width": 32}},  # resize exactly, crop nothing
    {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "resample": 2},
])
def test_hf_preprocessor_settings_are_followed(tmp_path, changes):
    import json

    arch = load_arch("ViT-Tiny-32px")
    export_hf(create_model(arch), CLIPConfig.for_model(arch), tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({**_LEGACY, **changes}))
    cfg, _ = load_foreign(tmp_path / "hf")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))
    theirs = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "hf")(image, return_tensors="pt")
    ours = Preprocess(cfg.preprocess)(image)  # (3, 32, 32)
    assert _rel(ours, theirs["pixel_values"][0]) <= 1e-5


def test_hf_preprocessing_cliplab_cannot_do_is_said(tmp_path):
    import json

    from cliplab.errors import CliplabWarning

    arch = load_arch("ViT-Tiny-32px")
    export_hf(create_model(arch), CLIPConfig.for_model(arch), tmp_path / "hf")
    pre = {**_LEGACY, "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.warns(CliplabWarning, match="resizes to"):
        load_foreign(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({**_LEGACY, "size": {"w": 3}}))
    with pytest.raises(CliplabError, match="size"):
        load_foreign(tmp_path / "hf")


@pytest.mark.parametrize(("content", "message"), [
    ([1, 2], "expected a JSON object, got list"),
    ({"image_mean": [0.5, 0.5, "x"]}, "image_mean 'x' is not a number"),
    ({"image_mean": [0.5, 0.5]}, "image_mean .* neither one number nor three"),
    ({"image_std": [0.5, 0, 0.5]}, "image_std .* not a non-zero number"),
    ({"rescale_factor": "1/255"}, "rescale_factor '1/255' is not a non-zero number"),
])
def test_bad_hf_preprocessor_values_are_one_line(tmp_path, capsys, content, message):
    import json

    arch = load_arch("ViT-Tiny-32px")
    export_hf(create_model(arch), CLIPConfig.for_model(arch), tmp_path / "hf")
    pre = content if isinstance(content, list) else {**_LEGACY, **content}
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(CliplabError, match=r"hf: preprocessor_config\.json: " + message):
        load_foreign(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_hf_checkpoints_load(hf_dir, tmp_path, safe):
    import json
    import shutil

    path, hf = hf_dir
    out = tmp_path / "sharded"
    if safe:
        hf.save_pretrained(out, max_shard_size="200KB")
        assert (out / "model.safetensors.index.json").exists()
    else:  # PyTorch shards, as older transformers wrote them
        out.mkdir()
        shutil.copy(path / "config.json", out / "config.json")
        items = sorted(hf.state_dict().items())
        halves = {"pytorch_model-00001-of-00002.bin": dict(items[::2]),
                  "pytorch_model-00002-of-00002.bin": dict(items[1::2])}
        for name, part in halves.items():
            torch.save(part, out / name)
        weight_map = {k: name for name, part in halves.items() for k in part}
        (out / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ours, _, _ = load_model(out)
    whole, _, _ = load_model(path)
    for k, v in whole.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k


def test_unsafe_opt_in_reaches_hf_pickles(hf_dir, tmp_path):
    import argparse
    import shutil

    path, hf = hf_dir
    (tmp_path / "hf").mkdir()
    shutil.copy(path / "config.json", tmp_path / "hf" / "config.json")
    checkpoint = {"state_dict": hf.state_dict(), "args": argparse.Namespace(lr=1.0)}  # a training script's file
    torch.save(checkpoint, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(CliplabError, match="refused to unpickle"):
        load_model(tmp_path / "hf")
    ours, _, _ = load_model(tmp_path / "hf", allow_unsafe=True)  # the user's explicit opt-in is honoured
    assert torch.equal(ours.logit_scale, hf.logit_scale)


def test_exported_folder_tokenises_as_cliplab(tmp_path):
    from cliplab.tokenizer import get_tokenizer

    arch = load_arch("ViT-Tiny-32px")
    export_hf(create_model(arch), CLIPConfig.for_model(arch), tmp_path / "hf")
    texts = ["a photo of a cat.", "Two DOGS, running!", "naïve café — 3.5 km", "🚀 rocket", "x" * 40]
    ours = get_tokenizer()(texts, context_length=32, truncate=True)  # (N, 32)
    for theirs in (transformers.CLIPTokenizer.from_pretrained(tmp_path / "hf"),
                   transformers.AutoProcessor.from_pretrained(tmp_path / "hf").tokenizer):
        ids = theirs(texts, padding="max_length", max_length=32, truncation=True)["input_ids"]
        for row, text, mine in zip(ids, texts, ours.tolist(), strict=True):
            n = mine.index(49407) + 1  # HF pads with the end-of-text id, OpenAI with 0
            assert row[:n] == mine[:n], text
    assert transformers.CLIPTokenizer.from_pretrained(tmp_path / "hf").model_max_length == 32


def test_export_refuses_a_learned_tokenizer(tmp_path):
    from cliplab.config import TokenizerConfig

    arch = load_arch("ViT-Tiny-32px")
    cfg = dataclasses.replace(CLIPConfig.for_model(arch), tokenizer=TokenizerConfig("bpe", 32, "tok.json"))
    with pytest.raises(CliplabError, match="learned tokenizer"):
        export_hf(create_model(arch), cfg, tmp_path / "hf")


@torch.no_grad()
def test_legacy_eos_with_its_own_vocabulary(tmp_path):
    """HF configs with eos_token_id 2 pool at the largest id: the end of text, the vocabulary's last id, also
    when the vocabulary is not CLIP's 49408. Ids from another tokenizer are one line, not an IndexError."""
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                max_position_embeddings=16, vocab_size=1000, eos_token_id=2, bos_token_id=998, pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=16,
                  patch_size=8)
    hf = transformers.CLIPModel(transformers.CLIPConfig(projection_dim=24, text_config=text,
                                                        vision_config=vision)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours, cfg, _ = load_model(tmp_path / "hf")
    assert cfg.model.text.eot_token_id == 999 and cfg.model.text.pool == "argmax"
    ids = torch.zeros(5, 16, dtype=torch.long)
    for i, k in enumerate((3, 7, 12, 5, 14)):
        ids[i, 0], ids[i, 1 : k + 1], ids[i, k + 1] = 998, torch.randint(3, 990, (k,)), 999
    ids[3, 6], ids[4, 15] = 2, 2  # rows without the top id 999 (this tokenizer's end of text might be 2)
    ids[4, 0], ids[4, 8] = 5, 997  # pooled at the highest id: 998 at 0 in row 3, 997 at 8 in row 4, as in HF
    assert _rel(ours.encode_text(ids), hf.get_text_features(input_ids=ids).pooler_output) <= 1e-5
    with pytest.raises(CliplabError, match="outside this model's vocabulary of 1000"):
        ours.encode_text(torch.full((1, 16), 49407))
    export_hf(ours, cfg, tmp_path / "again")  # eos id 2 again: HF pools as before, and so does cliplab
    back, cfg2, _ = load_model(tmp_path / "again")
    assert cfg2.model == cfg.model
    hf2 = transformers.CLIPModel.from_pretrained(tmp_path / "again").eval()
    assert hf2.config.text_config.eos_token_id == 2
    assert _rel(back.encode_text(ids), hf2.get_text_features(input_ids=ids).pooler_output) <= 1e-5


@torch.no_grad()
def test_eos_outside_the_vocabulary_is_said(tmp_path):
    """transformers' default eos id (49407) with a small vocabulary: no text can hold it."""
    text = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                max_position_embeddings=16, vocab_size=1000)
    cfg = transformers.CLIPConfig(projection_dim=16, text_config=text, vision_config=dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=16,
        patch_size=8))
    transformers.CLIPModel(cfg).save_pretrained(tmp_path / "hf")
    with pytest.warns(CliplabWarning, match="eos_token_id 49407 is outside the vocabulary of 1000"):
        _, got, _ = load_model(tmp_path / "hf")
    assert got.model.text.pool == "argmax"


@torch.no_grad()
def test_legacy_config_dicts_override_as_in_transformers(tmp_path):
    """``text_config_dict`` / ``vision_config_dict`` (old transformers files): transformers builds each tower
    from it alone, its defaults filling the rest."""
    import json

    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                 max_position_embeddings=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=32,
                  patch_size=16)
    torch.manual_seed(0)
    transformers.CLIPModel(transformers.CLIPConfig(projection_dim=16, text_config=small,
                                                   vision_config=vision)).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["text_config_dict"] = {**small, "hidden_act": "gelu"}
    data["vision_config_dict"] = {**vision, "hidden_act": "gelu", "layer_norm_eps": 1e-6}
    (tmp_path / "config.json").write_text(json.dumps(data))
    hf = transformers.CLIPModel.from_pretrained(tmp_path).eval()
    ours, cfg, _ = load_model(tmp_path)
    assert cfg.model.text.activation == hf.config.text_config.hidden_act == "gelu"
    assert cfg.model.vision.ln_eps == hf.config.vision_config.layer_norm_eps == 1e-6
    ids = torch.tensor([[49406, 320, 1125, 49407, 0, 0]])
    assert _rel(ours.encode_text(ids), hf.get_text_features(input_ids=ids).pooler_output) <= 1e-5
    images = torch.randn(2, 3, 32, 32)
    assert _rel(ours.encode_image(images), hf.get_image_features(pixel_values=images).pooler_output) <= 1e-5
