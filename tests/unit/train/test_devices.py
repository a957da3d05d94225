"""Device choice under torchrun and RNG states across GPU counts, with CUDA simulated (no GPU here)."""

import pytest
import torch
import torch.distributed as dist

from cliplab.errors import CliplabError
from cliplab.train import loop
from cliplab.train.state import rng_state, set_rng_state


@pytest.fixture
def two_gpu_rank(monkeypatch):
    """Process 1 of 2 on one node, with CUDA reported available and the process group already set up."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


@pytest.mark.parametrize("pref", ["auto", "cuda", "cuda:1"])
def test_each_torchrun_process_takes_its_local_gpu(two_gpu_rank, pref):
    assert loop._setup_distributed(pref) == (1, 2, torch.device("cuda", 1))


def test_another_processs_gpu_is_refused(two_gpu_rank):
    with pytest.raises(CliplabError, match=r"--device cuda:0: under torchrun process 1 .* uses cuda:1"):
        loop._setup_distributed("cuda:0")


def test_a_resume_that_sees_fewer_gpus_restores_the_ones_it_has(monkeypatch):
    state = {**rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)] * 8}  # saved where 8 GPUs were visible
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, index: calls.append(index))
    set_rng_state(state)
    assert calls == [0, 1]


def test_one_process_on_another_gpu_makes_it_the_current_one(monkeypatch):
    """Without set_device, pinned memory and CUDA's context would go to GPU 0, which may be someone else's."""
    chosen = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert loop._setup_distributed("cuda:1") == (0, 1, torch.device("cuda", 1))
    assert chosen == [torch.device("cuda", 1)]


def test_a_resume_under_ddp_gives_each_process_its_own_random_states(tmp_path, monkeypatch):
    """Rank 0 writes the checkpoint, but each process's generators (its GPU's above all) are its own."""
    from cliplab.config import CLIPConfig, load_arch
    from cliplab.model.build import create_model
    from cliplab.train import resume
    from cliplab.train.config import TrainConfig
    from cliplab.train.state import save_run_checkpoint

    cfg = CLIPConfig.for_model(load_arch("ViT-Tiny-32px"))
    model = create_model(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ranks = [{**rng_state(), "torch": torch.manual_seed(seed).get_state()} for seed in (10, 11)]
    final = save_run_checkpoint(tmp_path / "run", 1, model, cfg, {
        "optimizer": opt.state_dict(), "scaler": {}, "rng": ranks[0], "rng_ranks": ranks, "step": 1,
        "total_steps": 5}, train_config={"train": {"steps": 5}})
    restored = []
    monkeypatch.setattr(resume, "set_rng_state", restored.append)
    for rank in (0, 1):
        resume.restore(final, TrainConfig(), cfg, model, opt, None, rank=rank, world=2, notes=False)
    assert [torch.equal(r["torch"], ranks[i]["torch"]) for i, r in enumerate(restored)] == [True, True]
    assert not torch.equal(restored[0]["torch"], restored[1]["torch"])
    resume.restore(final, TrainConfig(), cfg, model, opt, None, rank=0, world=3, notes=False)  # another world size:
    assert torch.equal(restored[-1]["torch"], ranks[0]["torch"])  # rank 0's, as before
