"""Atomic writes: a writer failing on a full disk is one OSError naming the user's path, and leaves nothing."""

import errno

import pytest
import torch

from cliplab import fileio
from cliplab.config import CLIPConfig, load_arch
from cliplab.model.build import create_model
from cliplab.train.state import save_run_checkpoint


def test_a_writers_own_error_on_a_full_disk_is_an_oserror_naming_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_nearly_full", lambda folder: True)
    with pytest.raises(OSError) as info, fileio.atomic_path(tmp_path / "w.safetensors"):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
    monkeypatch.setattr(fileio, "_nearly_full", lambda folder: False)  # room left: a real error, kept as it is
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"), fileio.atomic_path(tmp_path / "w"):
        raise RuntimeError("PytorchStreamWriter failed")


def test_a_failed_run_checkpoint_leaves_no_partial_folder(tmp_path, monkeypatch):
    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
    monkeypatch.setattr(fileio, "_nearly_full", lambda folder: True)
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("file write failed")))
    with pytest.raises(OSError, match="no space left on the device"):
        save_run_checkpoint(tmp_path / "run", 3, create_model(cfg.model), cfg, {"step": 3})
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


def test_a_folder_that_takes_no_file_is_named_by_the_users_path(tmp_path, monkeypatch):
    import tempfile

    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".tok.json.abc123.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as info, fileio.atomic_path(tmp_path / "tok.json"):
        pass
    assert info.value.filename == str(tmp_path / "tok.json") and info.value.errno == errno.EROFS
