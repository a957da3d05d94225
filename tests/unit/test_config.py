import json

import pytest

from cliplab.config import (
    CLIPConfig,
    ConfigError,
    ResNetConfig,
    ViTConfig,
    arch_names,
    from_dict,
    load_arch,
    to_dict,
)

OPENAI = ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"]


def test_openai_architectures_ship():
    names = arch_names()
    for name in OPENAI:
        assert name in names


@pytest.mark.parametrize("name", arch_names())
def test_round_trip(name):
    cfg = CLIPConfig.for_model(load_arch(name), name=name)
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_tower_types_selected_by_file():
    assert isinstance(load_arch("RN50").vision, ResNetConfig)
    assert isinstance(load_arch("ViT-B-32").vision, ViTConfig)
    assert load_arch("ViT-Tiny-32px-CBOW").text.type == "cbow"


def test_openai_shapes():
    b32 = load_arch("ViT-B-32")
    assert (b32.embed_dim, b32.vision.width, b32.vision.layers, b32.vision.patch_size) == (512, 768, 12, 32)
    assert b32.vision.activation == b32.text.activation == "quick_gelu"
    l14 = load_arch("ViT-L-14-336")
    assert (l14.embed_dim, l14.vision.width, l14.vision.layers, l14.vision.image_size) == (768, 1024, 24, 336)
    rn = load_arch("RN50x64")
    assert (rn.embed_dim, rn.vision.layers, rn.vision.width, rn.vision.image_size) == (1024, (3, 15, 36, 10), 128, 448)


def test_unknown_key_is_an_error(tmp_path):
    data = to_dict(CLIPConfig.for_model(load_arch("ViT-Tiny-32px")))
    data["model"]["vision"]["widht"] = 3
    with pytest.raises(ConfigError, match="widht"):
        from_dict(data)
    data = to_dict(CLIPConfig.for_model(load_arch("ViT-Tiny-32px")))
    data["model"]["text"]["type"] = "lstm"
    with pytest.raises(ConfigError, match="lstm"):
        from_dict(data)
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 8, "vision": {"type": "vit"}, "text": {"type": "transformer"}, "x": 1}')
    with pytest.raises(ConfigError, match=r"bad\.json.*'x'"):
        load_arch(bad)


def test_invalid_values():
    with pytest.raises(ConfigError, match="patch_size"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ConfigError, match="activation"):
        ViTConfig(activation="relu6")
    with pytest.raises(ConfigError, match="unknown architecture"):
        load_arch("ViT-Z-99")


def test_configs_the_model_cannot_run_are_refused():
    from cliplab.config import CBOWTextConfig, TextTransformerConfig

    with pytest.raises(ConfigError, match=r"attention pool's width 512 \(width × 32\) is not divisible by heads 3"):
        ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=3)
    for cls in (TextTransformerConfig, CBOWTextConfig):
        with pytest.raises(ConfigError, match="eot_token_id 49407 is outside the vocabulary of 1000"):
            cls(vocab_size=1000)
        assert cls(vocab_size=1000, eot_token_id=999).eot_token_id == 999
    with pytest.raises(ConfigError, match=r"text\.pool: unknown value 'mean'"):
        TextTransformerConfig(pool="mean")


def test_text_pooling_round_trips_and_the_default_is_not_written():
    import dataclasses

    from cliplab.config import TextTransformerConfig

    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
    assert "pool" not in to_dict(cfg)["model"]["text"]  # files stay readable by versions without the field
    argmax = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, text=TextTransformerConfig(**{**dataclasses.asdict(cfg.model.text), "pool": "argmax"})))
    data = to_dict(argmax)
    assert data["model"]["text"]["pool"] == "argmax"
    assert from_dict(json.loads(json.dumps(data))) == argmax


def test_a_file_from_before_text_pooling_with_a_foreign_vocabulary_still_loads(tmp_path):
    """Written before ``pool`` existed, with OpenAI's end-of-text id and a vocabulary of 1,000: it pools at
    each text's highest id (a note says so) rather than failing to load; an architecture file that leaves the
    id to a learned tokenizer loads without a note."""
    from cliplab.config import model_from_dict, model_to_dict
    from cliplab.errors import CliplabWarning

    data = model_to_dict(load_arch("ViT-Tiny-32px"))
    data["text"] = {**data["text"], "vocab_size": 1000, "eot_token_id": 49407}
    with pytest.warns(CliplabWarning, match="eot_token_id 49407 is outside the vocabulary of 1000 tokens"):
        text = model_from_dict(data).text
    assert (text.eot_token_id, text.pool) == (999, "argmax")
    with pytest.raises(ConfigError, match="outside the vocabulary"):  # a file that says how to pool is taken at
        model_from_dict({**data, "text": {**data["text"], "pool": "eot"}})  # its word
    (tmp_path / "arch.json").write_text(json.dumps({**data, "text": {
        k: v for k, v in data["text"].items() if k != "eot_token_id"}}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_arch(tmp_path / "arch.json").text.eot_token_id == 999
