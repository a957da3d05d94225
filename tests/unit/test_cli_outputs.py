"""What the model-writing commands write: never their own input, never over an output unasked, never a
model's or run's config.json, and errors that name the user's path."""

import json

import pytest

import cliplab
from cliplab.checkpoint import save_checkpoint
from cliplab.cli.main import main
from cliplab.config import CLIPConfig
from cliplab.errors import CliplabWarning


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("outs")
    for name in ("ViT-Tiny-32px", "ViT-Tiny-32px-CBOW"):
        model = cliplab.create_model(name)
        save_checkpoint(model, CLIPConfig.for_model(model.cfg, name=name), d / name)
    (d / "caps.txt").write_text("a red square\na blue circle\n" * 20)
    return d


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_outputs_are_not_inputs_nor_replaced_unasked(ckpts, tmp_path, capsys):
    vit = str(ckpts / "ViT-Tiny-32px")
    assert main(["convert", vit, vit]) == 2
    assert "is also the input" in _error(capsys)
    assert main(["interpolate", vit, vit, "--output", vit]) == 2
    assert "is also the input" in _error(capsys)
    assert main(["tokenizer", "train", "--input", str(ckpts / "caps.txt"), "--output", str(ckpts / "caps.txt"),
                 "--vocab-size", "520"]) == 2
    assert "is also the input" in _error(capsys)
    out = tmp_path / "copy"
    assert main(["convert", vit, str(out)]) == 0
    assert main(["convert", vit, str(out)]) == 2
    assert "already exists; pass --overwrite" in _error(capsys)
    assert main(["convert", vit, str(out), "--overwrite"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["convert", vit, str(tmp_path / "empty")]) == 0  # an empty folder replaces nothing
    assert cliplab.load(tmp_path / "empty")[0] is not None
    killed = tmp_path / "killed"  # what a convert killed mid-write leaves: only its temporary file
    killed.mkdir()
    (killed / ".model.safetensors.k2x9_q.tmp").write_bytes(b"\0" * 64)
    assert main(["convert", vit, str(killed)]) == 0, _error(capsys)  # the rerun is not refused
    assert cliplab.load(killed)[0] is not None


def test_an_output_folder_holding_the_input_is_refused(ckpts, capsys):
    """`export` replaces its output folder whole: with the checkpoint inside it, --overwrite deleted it."""
    vit = str(ckpts / "ViT-Tiny-32px")
    assert main(["export", "--checkpoint", vit, "--output", str(ckpts), "--format", "onnx", "--overwrite"]) == 2
    assert f"holds the input {vit}" in _error(capsys)
    assert main(["convert", vit, str(ckpts), "--overwrite"]) == 2
    assert "holds the input" in _error(capsys)
    assert cliplab.load(vit)[0] is not None


def test_onnx_export_never_replaces_a_models_config(ckpts, capsys):
    pytest.importorskip("onnx")
    vit = str(ckpts / "ViT-Tiny-32px")
    before = (ckpts / "ViT-Tiny-32px" / "config.json").read_text()
    assert main(["export", "--checkpoint", str(ckpts / "ViT-Tiny-32px-CBOW"), "--output", vit, "--overwrite"]) == 2
    assert "holds a model" in _error(capsys)
    assert (ckpts / "ViT-Tiny-32px" / "config.json").read_text() == before


def test_a_refused_hf_conversion_leaves_no_folder(ckpts, tmp_path, capsys):
    assert main(["convert", str(ckpts / "ViT-Tiny-32px-CBOW"), str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "a vit image tower with a cbow text tower" in _error(capsys)
    assert not (tmp_path / "hf").exists()


def test_write_errors_name_the_users_path(ckpts, tmp_path, capsys):
    (tmp_path / "tok.json").mkdir()
    (tmp_path / "tok.json" / "x").write_text("")  # not empty: refused unless --overwrite
    args = ["tokenizer", "train", "--input", str(ckpts / "caps.txt"), "--output", str(tmp_path / "tok.json"),
            "--vocab-size", "520"]
    assert main([*args, "--overwrite"]) == 2
    err = _error(capsys)
    assert err.startswith(f"error: {tmp_path / 'tok.json'}: ") and ".tmp" not in err


def test_tokenizer_takes_the_csv_flag_names(tmp_path):
    (tmp_path / "c.tsv").write_text("filepath\tcap\n" + "a.png\ta red square\n" * 30)
    assert main(["tokenizer", "train", "--input", str(tmp_path / "c.tsv"), "--csv-caption-key", "cap",
                 "--csv-separator", "\\t", "--vocab-size", "520", "--output", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())


def test_version_and_the_subcommands_own_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"cliplab {cliplab.__version__}"
    with pytest.raises(SystemExit):
        main(["convert", "a", "b", "--nope"])
    err = capsys.readouterr().err
    assert err.startswith("usage: cliplab convert") and "unrecognized arguments: --nope" in err


def test_a_hf_model_with_its_own_vocabulary_is_said(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(projection_dim=16, vision_config=dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1, image_size=32,
        patch_size=16), text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                         num_hidden_layers=1, vocab_size=1000))
    transformers.CLIPModel(cfg).save_pretrained(tmp_path / "hf")
    with pytest.warns(CliplabWarning, match="vocabulary of 1000 tokens, not the 49408 of OpenAI's BPE"):
        cliplab.load(tmp_path / "hf")


def test_every_subcommand_prints_its_help(capsys):
    """argparse formats help lazily: a stray '%' in a help string only fails when --help is asked for."""
    import argparse

    from cliplab.cli.main import build_parser

    def commands(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, [*path, name])
        yield path

    for path in commands(build_parser(), []):
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0, path
        assert capsys.readouterr().out.startswith("usage: cliplab"), path


def test_overwrite_replaces_the_folder_whole_or_not_at_all(ckpts, tmp_path, capsys, monkeypatch):
    """--overwrite wrote file by file: an error or kill between the weights and the config left one model's
    weights beside another's config, and files of an earlier export stayed beside the new model."""
    import cliplab.checkpoint

    vit, cbow = str(ckpts / "ViT-Tiny-32px"), str(ckpts / "ViT-Tiny-32px-CBOW")
    out = tmp_path / "out"
    assert main(["convert", vit, str(out), "--format", "hf"]) == 0
    assert (out / "tokenizer_config.json").exists() or (out / "preprocessor_config.json").exists()
    assert main(["convert", cbow, str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # nothing of the HF export
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cliplab.checkpoint, "write_json", fail)  # after the weights, before the config
    assert main(["interpolate", vit, vit, "--output", str(out), "--overwrite"]) != 0
    assert "disk full" in _error(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the CBOW model, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    assert cliplab.load(out)[0].cfg.text.type == "cbow"
