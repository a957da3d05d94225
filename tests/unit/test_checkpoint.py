import json
import os

import pytest
import torch
from safetensors.torch import save_file

import cliplab
from cliplab.checkpoint import (
    CheckpointError,
    is_native,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from cliplab.config import CLIPConfig, load_arch, to_dict
from cliplab.fileio import write_json
from cliplab.model.build import create_model
from tests.helpers import spy_fsync_and_replace


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"), name="ViT-Tiny-32px")
    return cfg, create_model(cfg.model)


@pytest.mark.parametrize("target", ["ckpt", "ckpt.safetensors"])
def test_round_trip_exact(tmp_path, tiny, target):
    cfg, model = tiny
    path = save_checkpoint(model, cfg, tmp_path / target)
    assert is_native(path)
    cfg2, sd = load_checkpoint(path)
    assert cfg2 == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v), k
    assert not list(tmp_path.glob("**/.*.tmp")), "temporary files left behind"


def test_config_is_readable_json(tmp_path, tiny):
    cfg, model = tiny
    save_checkpoint(model, cfg, tmp_path / "c")
    data = json.loads((tmp_path / "c" / "config.json").read_text())
    assert data["model"]["vision"]["type"] == "vit"
    assert data["preprocess"]["image_size"] == 32
    assert read_config(tmp_path / "c") == cfg


def test_truncated_safetensors(tmp_path, tiny):
    cfg, model = tiny
    path = save_checkpoint(model, cfg, tmp_path / "c")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(corrupt|truncated)") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_shape_mismatch_names_tensor(tmp_path, tiny):
    cfg, model = tiny
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["visual.proj.weight"] = torch.zeros(64, 128)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path), metadata={"cliplab_config": json.dumps(to_dict(cfg))})
    with pytest.raises(CheckpointError, match=r"visual\.proj\.weight.*\[64, 128\].*\[128, 128\]"):
        load_checkpoint(path)


def test_missing_tensor(tmp_path, tiny):
    cfg, model = tiny
    sd = dict(model.state_dict())
    del sd["logit_scale"]
    with pytest.raises(CheckpointError, match=r"missing.*logit_scale"):
        save_checkpoint(sd, cfg, tmp_path / "x")


def test_not_a_checkpoint(tmp_path):
    assert not is_native(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_models_are_not_written_into_run_folders_nor_runs_into_model_folders(tmp_path, capsys):
    from cliplab.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--model", "ViT-Tiny-32px", "--steps", "1", "--batch-size", "4", "--workers", "0",
                 "--output", str(run)]) == 0
    config = (run / "config.json").read_text()
    model_dir = tmp_path / "model"
    assert main(["convert", str(run), str(model_dir)]) == 0
    for cmd in (["convert", str(model_dir), str(run)], ["export", "--checkpoint", str(model_dir), "--format", "hf",
                                                        "--output", str(run)]):
        capsys.readouterr()
        assert main([*cmd, "--overwrite"]) == 2
        assert "is a training run's folder" in capsys.readouterr().err
    assert (run / "config.json").read_text() == config
    capsys.readouterr()
    assert main(["train", "--model", "ViT-Tiny-32px", "--steps", "1", "--batch-size", "4", "--workers", "0",
                 "--output", str(model_dir)]) == 2
    assert "holds a model" in capsys.readouterr().err


def test_checkpoint_files_get_the_usual_mode(tmp_path):
    """safetensors writes through its own temporary file, which kept mkstemp's 0600."""
    import os
    import stat

    from cliplab.checkpoint import save_checkpoint
    from cliplab.config import CLIPConfig, load_arch
    from cliplab.model.build import create_model

    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
    old = os.umask(0o022)
    try:
        save_checkpoint(create_model(cfg.model), cfg, tmp_path / "ckpt")
        save_checkpoint(create_model(cfg.model), cfg, tmp_path / "one.safetensors")
    finally:
        os.umask(old)
    for f in (tmp_path / "ckpt" / "model.safetensors", tmp_path / "ckpt" / "config.json", tmp_path / "one.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_write_json_replaces_the_file_instead_of_rewriting_it(tmp_path):
    """The new content goes to a new inode renamed into place: a hard link to the old file keeps the old data
    (a reader holding the old file, or a crash mid-write, never sees a torn one)."""
    path, old = tmp_path / "state.json", tmp_path / "old.json"
    write_json(path, {"v": 1})
    os.link(path, old)
    write_json(path, {"v": 2})
    assert json.loads(old.read_text()) == {"v": 1}
    assert json.loads(path.read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json", "state.json"]


def test_write_json_fsyncs_the_temporary_file_before_the_rename(tmp_path, monkeypatch):
    """Renaming an unsynced file can leave an empty one after a power cut: the data is fsynced first."""
    events = spy_fsync_and_replace(monkeypatch)
    folder = tmp_path.resolve()
    path = folder / "state.json"
    write_json(path, {"v": 1})
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1 and renames[0][2] == str(path)
    tmp = renames[0][1]
    assert os.path.dirname(tmp) == str(folder)
    assert ("fsync", tmp) in events[: events.index(renames[0])]
    assert ("fsync", str(folder)) in events[events.index(renames[0]) :]  # the rename itself made durable


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64])
def test_tensors_of_a_kind_the_model_cannot_use_are_refused(tmp_path, tiny, dtype):
    cfg, model = tiny
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["text.ln_final.weight"] = sd["text.ln_final.weight"].to(dtype)
    with pytest.raises(CheckpointError, match=r"tensor text\.ln_final\.weight is .*needs floating-point"):
        save_checkpoint(sd, cfg, tmp_path / "x")
    path = tmp_path / "bad.safetensors"  # a file written by something else
    save_file(sd, str(path), metadata={"cliplab_config": json.dumps(to_dict(cfg))})
    with pytest.raises(CheckpointError, match=r"tensor text\.ln_final\.weight is") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_any_float_precision_loads_and_counters_may_be_cast_with_the_rest(tmp_path):
    cfg = CLIPConfig.for_model(load_arch("RN-Tiny-64px"))
    sd = {k: v.half() if v.is_floating_point() else v for k, v in create_model(cfg.model).state_dict().items()}
    save_checkpoint(sd, cfg, tmp_path / "half")  # fp16 weights with int64 counters: fine
    counter = next(k for k in sd if k.endswith("num_batches_tracked"))
    sd[counter] = torch.tensor(7.0, dtype=torch.float16)  # a state dict cast to half wholesale
    save_checkpoint(sd, cfg, tmp_path / "all-half")
    model, _, _ = cliplab.load(tmp_path / "all-half")
    assert model.state_dict()[counter].dtype == torch.int64 and int(model.state_dict()[counter]) == 7
    sd[counter] = torch.tensor(True)
    with pytest.raises(CheckpointError, match=rf"tensor {counter} is bool; the model needs integer values"):
        save_checkpoint(sd, cfg, tmp_path / "x")
