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


def test_a_folder_is_on_disk_folders_and_all_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    from tests.helpers import spy_fsync_and_replace

    events = spy_fsync_and_replace(monkeypatch)
    with fileio.atomic_dir(tmp_path / "out") as work:
        (work / "sub").mkdir()
        (work / "sub" / "a.bin").write_bytes(b"a")
        work_path = str(work.resolve())
    rename = next(i for i, e in enumerate(events) if e[0] == "replace")
    synced = {e[1] for e in events[:rename] if e[0] == "fsync"}
    assert {work_path, f"{work_path}/sub", f"{work_path}/sub/a.bin"} <= synced


def test_a_kill_between_the_two_renames_gives_the_old_folder_back(tmp_path):
    """Killed after the old folder moved aside and before the new one moved in: the next write starts by
    putting the last good folder back, so a failure then still leaves it."""
    (tmp_path / ".out.tmp-old").mkdir()
    (tmp_path / ".out.tmp-old" / "model.bin").write_bytes(b"good")
    with pytest.raises(RuntimeError, match="failed"), fileio.atomic_dir(tmp_path / "out"):
        raise RuntimeError("the new write failed")
    assert (tmp_path / "out" / "model.bin").read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
