"""Run checkpoints: durable before they are named ``latest``, and a resume restores every random state."""

import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import spy_fsync_and_replace

from cliplab.checkpoint import load_checkpoint
from cliplab.config import CLIPConfig, load_arch
from cliplab.model.build import create_model
from cliplab.train import state as state_module
from cliplab.train.config import TrainConfig
from cliplab.train.resume import restore
from cliplab.train.state import load_trainer_state, resolve_run_dir, rng_state, save_run_checkpoint


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"), name="ViT-Tiny-32px")
    model = create_model(cfg.model)
    return cfg, model, torch.optim.SGD(model.parameters(), lr=0.1)


def _save(run, step, tiny, rng=None):
    cfg, model, opt = tiny
    trainer = {"optimizer": opt.state_dict(), "scaler": {}, "rng": rng or rng_state(), "step": step,
               "total_steps": 10}
    return save_run_checkpoint(run, step, model, cfg, trainer, train_config={"train": {"steps": 10}})


def test_latest_moves_only_after_the_checkpoint_is_in_place(tmp_path, tiny, monkeypatch):
    """A save that fails to rename its temporary folder leaves ``latest`` on the previous, intact checkpoint."""
    run = tmp_path / "run"
    _save(run, 1, tiny)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".tmp-step-"):
            raise OSError(errno.EIO, "simulated failure", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(state_module.os, "replace", replace)
    with pytest.raises(OSError, match="simulated failure"):
        _save(run, 2, tiny)
    monkeypatch.undo()
    latest = resolve_run_dir(run)
    assert latest.name == "step-00000001"
    cfg, sd = load_checkpoint(latest)
    assert cfg == tiny[0] and torch.equal(sd["logit_scale"], tiny[1].logit_scale.detach())
    assert load_trainer_state(latest)["step"] == 1


def test_every_file_is_fsynced_before_the_folder_is_renamed(tmp_path, tiny, monkeypatch):
    """Each file of the temporary step folder, at its final name there, is fsynced before the rename."""
    events = spy_fsync_and_replace(monkeypatch)
    final = _save(tmp_path.resolve() / "run", 1, tiny)
    monkeypatch.undo()
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and Path(e[1]).name == ".tmp-step-00000001"]
    assert len(renames) == 1 and events[renames[0]][2] == str(final)
    tmp = Path(events[renames[0]][1])
    synced = {e[1] for e in events[: renames[0]] if e[0] == "fsync"}
    files = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    assert {"model.safetensors", "config.json", "trainer.pt", "train_config.json"} <= set(files)
    assert [f for f in files if str(tmp / f) not in synced] == []


def _draws():
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_resume_restores_the_random_states(tmp_path, tiny):
    """torch, numpy and Python's generators continue on resume as they would have in the saved run."""
    saved = rng_state()
    expected = _draws()
    final = _save(tmp_path / "run", 1, tiny, rng=saved)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    assert _draws() != expected
    cfg, model, opt = tiny
    at = restore(final, TrainConfig(), cfg, model, opt, None, rank=0, world=1, notes=False)
    assert at.step == 1 and at.total == 10
    assert _draws() == expected


def test_a_prune_cut_short_never_costs_a_whole_checkpoint(tmp_path, tiny):
    """A kill in the middle of removing an old checkpoint leaves a partial folder with the newest folder
    time; the next prune must remove it, not the whole checkpoints written before it."""
    cfg, model, opt = tiny
    run = tmp_path / "run"
    for step in (1, 2):
        _save(run, step, tiny)
    half = run / "checkpoints" / "step-00000001"
    (half / "model.safetensors").unlink()  # as a removal cut short would leave it
    (half / "trainer.pt").unlink()
    os.utime(half)  # its folder time is now the newest
    trainer = {"optimizer": opt.state_dict(), "scaler": {}, "rng": rng_state(), "step": 3, "total_steps": 10}
    save_run_checkpoint(run, 3, model, cfg, trainer, keep_last=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step-00000002",
                                                                                     "step-00000003"]


def test_saving_a_step_again_keeps_latest_whole_throughout(tmp_path, tiny, monkeypatch):
    """A run resumed from an older step saves a later step that already exists: a kill between moving the
    old one away and putting the new one in place must leave `latest` naming a whole checkpoint."""
    run = tmp_path / "run"
    for step in (2, 4):
        _save(run, step, tiny)
    real_replace = os.replace

    def killed_after_moving_the_old_one_away(src, dst):
        real_replace(src, dst)
        if Path(dst).name == ".old-step-00000004":
            raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(state_module.os, "replace", killed_after_moving_the_old_one_away)
    with pytest.raises(KeyboardInterrupt):
        _save(run, 4, tiny)
    monkeypatch.undo()
    latest = resolve_run_dir(run)  # the new step 4, complete, under its temporary name
    assert load_trainer_state(latest)["step"] == 4 and load_checkpoint(latest)[0] == tiny[0]
    _save(run, 5, tiny)  # the next save clears the leftovers and moves on
    assert resolve_run_dir(run).name == "step-00000005"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
