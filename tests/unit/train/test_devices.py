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
