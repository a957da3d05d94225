"""Two gloo processes: the gathered loss and DDP-averaged gradients equal the single-process ones."""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cliplab.loss import distributed_clip_loss

from .test_losses import _inputs, naive_clip, naive_siglip

N_PER_RANK, WORLD = 6, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, local_loss, loss, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    img, txt, scale, bias = _inputs(N_PER_RANK * WORLD, seed=3)
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    my_img = img.detach()[rows].clone().requires_grad_()
    my_txt = txt.detach()[rows].clone().requires_grad_()
    value = distributed_clip_loss(my_img, my_txt, scale, bias if loss == "siglip" else None,
                                  local_loss=local_loss, loss=loss)
    value.backward()
    # what DDP does to parameter gradients: average over ranks (here: the temperature and bias)
    for t in (scale, bias):
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        dist.all_reduce(t.grad)
        t.grad /= WORLD
    loss_avg = value.detach().clone()
    dist.all_reduce(loss_avg)
    torch.save({"loss": loss_avg / WORLD, "img": my_img.grad / WORLD, "txt": my_txt.grad / WORLD,
                "scale": scale.grad, "bias": bias.grad}, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo's threads occasionally abort there after the work is done


@pytest.mark.parametrize("local_loss", [True, False])
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_two_processes_equal_single_process(tmp_path, local_loss, loss):
    mp.start_processes(_worker, args=(_free_port(), local_loss, loss, str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(WORLD)]
    img, txt, scale, bias = _inputs(N_PER_RANK * WORLD, seed=3)
    args = [img, txt, scale, bias] if loss == "siglip" else [img, txt, scale]
    ref = (naive_siglip if loss == "siglip" else naive_clip)(*args)
    grads = torch.autograd.grad(ref, args)
    torch.testing.assert_close(parts[0]["loss"], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([p["img"] for p in parts]), grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([p["txt"] for p in parts]), grads[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts[0]["scale"], grads[2], rtol=1e-5, atol=1e-6)
    if loss == "siglip":
        torch.testing.assert_close(parts[0]["bias"], grads[3], rtol=1e-5, atol=1e-6)
