"""Two gloo processes: the gathered loss and DDP-averaged gradients equal the single-process ones.

One spawn runs every configuration (loss × local_loss × chunked) to keep the test fast.
"""

import datetime
import itertools
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cliplab.loss import distributed_clip_loss, gather_features

from .test_losses import _inputs, naive_clip, naive_siglip

N_PER_RANK, WORLD = 6, 2
CONFIGS = list(itertools.product(["clip", "siglip"], [True, False], [None, 4]))  # loss, local_loss, chunk_size
# the CLIP loss given a logit bias it ignores: (local_loss, chunk_size)
CLIP_BIAS_CONFIGS = list(itertools.product([True, False], [None, 4]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank, loss, local_loss, chunk, clip_bias=False):
    img, txt, scale, bias = _inputs(N_PER_RANK * WORLD, seed=3)
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    my_img = img.detach()[rows].clone().requires_grad_()
    my_txt = txt.detach()[rows].clone().requires_grad_()
    value = distributed_clip_loss(my_img, my_txt, scale, bias if loss == "siglip" or clip_bias else None,
                                  local_loss=local_loss, chunk_size=chunk, loss=loss)
    value.backward()
    # what DDP does: average parameter gradients over ranks (the temperature and bias here, and every parameter
    # upstream of the embeddings, whose gradients are linear in the embedding gradients)
    out = {"img": my_img.grad / WORLD, "txt": my_txt.grad / WORLD,
           "rank_bias_grad": None if bias.grad is None else bias.grad.clone()}
    for name, t in (("scale", scale), ("bias", bias)):
        grad = torch.zeros_like(t) if t.grad is None else t.grad.clone()
        dist.all_reduce(grad)
        out[name] = grad / WORLD
    loss_avg = value.detach().clone()
    dist.all_reduce(loss_avg)
    out["loss"] = loss_avg / WORLD
    out["rank_loss"] = value.detach()
    return out


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    results = {cfg: _run(rank, *cfg) for cfg in CONFIGS}
    results.update({("clip-bias", *cfg): _run(rank, "clip", *cfg, clip_bias=True) for cfg in CLIP_BIAS_CONFIGS})
    img = torch.full((N_PER_RANK, 3), float(rank))
    all_img, all_txt = gather_features(img, img + 10)
    results["gathered"] = {"img": all_img, "txt": all_txt}
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo's threads occasionally abort there after the work is done


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"{r}.pt", weights_only=False) for r in range(WORLD)]


def test_gather_features_in_rank_order(parts):
    expected = torch.cat([torch.full((N_PER_RANK, 3), float(r)) for r in range(WORLD)])
    for p in parts:
        torch.testing.assert_close(p["gathered"]["img"], expected)
        torch.testing.assert_close(p["gathered"]["txt"], expected + 10)


@pytest.mark.parametrize("loss,local_loss,chunk", CONFIGS)
def test_two_processes_equal_single_process(parts, loss, local_loss, chunk):
    got = [p[(loss, local_loss, chunk)] for p in parts]
    img, txt, scale, bias = _inputs(N_PER_RANK * WORLD, seed=3)
    args = [img, txt, scale, bias] if loss == "siglip" else [img, txt, scale]
    ref = (naive_siglip if loss == "siglip" else naive_clip)(*args)
    grads = torch.autograd.grad(ref, args)
    tol = {"rtol": 1e-5, "atol": 1e-6}
    for g in got:
        torch.testing.assert_close(g["loss"], ref.detach(), **tol)
        torch.testing.assert_close(g["scale"], grads[2], **tol)
        if loss == "siglip":
            torch.testing.assert_close(g["bias"], grads[3], **tol)
    torch.testing.assert_close(torch.cat([g["img"] for g in got]), grads[0], **tol)
    torch.testing.assert_close(torch.cat([g["txt"] for g in got]), grads[1], **tol)
    if local_loss:  # each rank really computed a different (local) part of the loss
        assert not torch.allclose(got[0]["rank_loss"], got[1]["rank_loss"])


@pytest.mark.parametrize("local_loss,chunk", CLIP_BIAS_CONFIGS)
def test_clip_loss_gives_its_ignored_bias_a_zero_gradient(parts, local_loss, chunk):
    """A logit bias is a constant shift for the CLIP loss: every rank gets a gradient (so DDP can reduce it),
    and it is zero; the loss and the other gradients are those without a bias."""
    img, txt, scale, _ = _inputs(N_PER_RANK * WORLD, seed=3)
    ref = naive_clip(img, txt, scale)
    grads = torch.autograd.grad(ref, [img, txt, scale])
    tol = {"rtol": 1e-5, "atol": 1e-6}
    got = [p[("clip-bias", local_loss, chunk)] for p in parts]
    for g in got:
        assert g["rank_bias_grad"] is not None
        torch.testing.assert_close(g["rank_bias_grad"], torch.zeros(()), rtol=0, atol=0 if chunk else 1e-6)
        torch.testing.assert_close(g["loss"], ref.detach(), **tol)
        torch.testing.assert_close(g["scale"], grads[2], **tol)
    torch.testing.assert_close(torch.cat([g["img"] for g in got]), grads[0], **tol)
    torch.testing.assert_close(torch.cat([g["txt"] for g in got]), grads[1], **tol)
