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
