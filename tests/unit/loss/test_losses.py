"""Every loss variant against a naive five-line reference (F.cross_entropy on the full logits), forward and backward."""

import math

import pytest
import torch
import torch.nn.functional as F

from cliplab.loss import chunked as chunked_module
from cliplab.loss import (
    chunked_clip_loss,
    chunked_cross_entropy,
    chunked_siglip_loss,
    clip_loss,
    distributed_clip_loss,
    siglip_loss,
)


def naive_clip(img, txt, scale, bias=None):
    logits = scale * img @ txt.T + (0 if bias is None else bias)
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def naive_siglip(img, txt, scale, bias, offset=0):
    z = -torch.ones(len(img), len(txt), dtype=img.dtype)
    z[torch.arange(len(img)), torch.arange(len(img)) + offset] = 1
    return -F.logsigmoid(z * (scale * img @ txt.T + bias)).sum() / len(img)


def _inputs(n, d=16, seed=0, dtype=torch.float32, scale=14.3, m=None):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)
    txt = torch.randn(m or n, d, generator=g, dtype=dtype)
    txt[:n] += 0.5 * img
    txt = F.normalize(txt, dim=-1)
    return (img.requires_grad_(), txt.requires_grad_(), torch.tensor(scale, dtype=dtype, requires_grad=True),
            torch.tensor(-1.5, dtype=dtype, requires_grad=True))


def _value_and_grads(fn, args, weight=1.0):
    """Loss and d(weight·loss)/d(every tensor arg); a bias the loss ignores gets a zero gradient."""
    loss = fn(*args)
    grads = torch.autograd.grad(loss * weight, args, allow_unused=True)
    return [loss.detach()] + [torch.zeros_like(a) if g is None else g for a, g in zip(args, grads, strict=True)]


def _close(ours, ref, tol=1e-5):
    for i, (x, y) in enumerate(zip(ours, ref, strict=True)):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m, i=i: f"output {i}: {m}")


@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_loss(with_bias):
    img, txt, scale, bias = _inputs(10)
    args = [img, txt, scale, bias] if with_bias else [img, txt, scale]
    _close(_value_and_grads(clip_loss, args), _value_and_grads(naive_clip, args))


def test_clip_loss_rejects_mismatched_shapes():
    img, txt, scale, _ = _inputs(10, m=11)
    with pytest.raises(ValueError, match="one shape"):
        clip_loss(img, txt, scale)
    with pytest.raises(ValueError, match="one shape"):
        chunked_clip_loss(img, txt, scale)


@pytest.mark.parametrize("n,m,offset", [(9, 9, 0), (4, 12, 8), (5, 12, 3)])
def test_siglip_loss(n, m, offset):
    img, txt, scale, bias = _inputs(n, m=m)
    args = [img, txt, scale, bias]
    _close(_value_and_grads(lambda *a: siglip_loss(*a, offset=offset), args),
           _value_and_grads(lambda *a: naive_siglip(*a, offset=offset), args))


@pytest.mark.parametrize("n,chunk", [(37, 8), (37, 1), (37, 100), (64, 16), (50, 49), (50, 50)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_clip_equals_naive(n, chunk, with_bias):
    img, txt, scale, bias = _inputs(n, seed=n + chunk)
    args = [img, txt, scale, bias] if with_bias else [img, txt, scale]
    ours = _value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=chunk), args, weight=2.5)
    _close(ours, _value_and_grads(naive_clip, args, weight=2.5))


def test_chunked_clip_float64_is_exact():
    args = list(_inputs(29, seed=5, dtype=torch.float64, scale=50.0)[:3])
    _close(_value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=6), args),
           _value_and_grads(naive_clip, args), tol=1e-12)


def test_chunked_clip_only_image_grad():
    img, txt, scale, _ = _inputs(21, seed=2)
    txt = txt.detach()
    ours = torch.autograd.grad(chunked_clip_loss(img, txt, scale, chunk_size=5), img)[0]
    torch.testing.assert_close(ours, torch.autograd.grad(naive_clip(img, txt, scale), img)[0], rtol=1e-5, atol=1e-5)


def _far_apart(n=48, d=8):
    """Temperature 100 and rows/columns ~200 nats apart: one shared exp per tile would under/overflow."""
    g = torch.Generator().manual_seed(7)
    e = F.normalize(torch.randn(d, generator=g), dim=0)
    noise = 0.05 * torch.randn(n, d, generator=g)
    sign = torch.ones(n, 1)
    sign[n // 2 :] = -1  # the second half of the images points the other way
    img = F.normalize(sign * e + noise, dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt[: n // 3] = F.normalize(e + noise[: n // 3], dim=-1)
    txt[-n // 4 :] = F.normalize(-e + noise[-n // 4 :], dim=-1)
    return [img.requires_grad_(), txt.requires_grad_(), torch.tensor(100.0, requires_grad=True)]


@pytest.mark.parametrize("chunk", [8, 13])
def test_chunked_clip_far_apart_rows_and_columns(chunk):
    args = _far_apart()
    ref = _value_and_grads(naive_clip, args)
    _close(_value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=chunk), args), ref)


def test_far_apart_case_needs_the_exact_fallback(monkeypatch):
    """The case above really exercises the fallback: without it the gradients are wrong."""
    monkeypatch.setattr(chunked_module, "_SPREAD", math.inf)
    args = _far_apart()
    ours = _value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=8), args)
    ref = _value_and_grads(naive_clip, args)
    assert any(not torch.allclose(x, y, rtol=1e-5, atol=1e-5) for x, y in zip(ours, ref, strict=True))


def _one_direction(n=48, d=8, captions=4):
    """Images all near +e, a few captions orthogonal to e, the others near e (temperature 100): the orthogonal
    captions' columns sit ~100 nats below their tiles' top, where one shared exp leaves only subnormals."""
    g = torch.Generator().manual_seed(1)
    e = F.normalize(torch.randn(d, generator=g), dim=0)
    img = F.normalize(e + 0.01 * torch.randn(n, d, generator=g), dim=-1)
    caps = torch.randn(captions, d, generator=g)
    caps = F.normalize(caps - (caps @ e)[:, None] * e, dim=-1)
    txt = torch.cat([caps, F.normalize(e + 0.01 * torch.randn(n - captions, d, generator=g), dim=-1)])
    return [img.requires_grad_(), txt.requires_grad_(), torch.tensor(100.0, requires_grad=True)]


def test_chunked_clip_far_off_columns_use_the_exact_forward_fallback():
    """Columns ~100 nats below every tile's top need the exact column log-sum-exp of the forward pass."""
    args = _one_direction()
    _close(_value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=8), args),
           _value_and_grads(naive_clip, args))


def test_chunked_clip_all_exact_fallback_matches(monkeypatch):
    """With every row and column sent down the exact path, the result is still the naive one."""
    monkeypatch.setattr(chunked_module, "_SPREAD", -1.0)
    args = list(_inputs(33, seed=4)[:3])
    _close(_value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=7), args),
           _value_and_grads(naive_clip, args))


@pytest.mark.parametrize("n,m,offset,chunk", [(6, 18, 12, 4), (6, 18, 0, 100), (7, 7, 0, 1), (5, 20, 9, 6)])
def test_chunked_cross_entropy_equals_naive(n, m, offset, chunk):
    q, k, scale, _ = _inputs(n, m=m, seed=m + offset)
    args = [q, k, scale]

    def naive(q, k, s):
        return F.cross_entropy(s * q @ k.T, torch.arange(len(q)) + offset)

    _close(_value_and_grads(lambda *a: chunked_cross_entropy(*a, offset=offset, chunk_size=chunk), args, 0.7),
           _value_and_grads(naive, args, 0.7))


def test_chunked_cross_entropy_rejects_bad_offset():
    q, k, scale, _ = _inputs(6, m=10)
    with pytest.raises(ValueError, match="offset"):
        chunked_cross_entropy(q, k, scale, offset=5)


@pytest.mark.parametrize("n,m,offset,chunk", [(37, 37, 0, 8), (37, 37, 0, 1), (20, 20, 0, 64), (6, 18, 12, 5)])
def test_chunked_siglip_equals_naive(n, m, offset, chunk):
    img, txt, scale, bias = _inputs(n, m=m, seed=n + chunk)
    args = [img, txt, scale, bias]
    ours = _value_and_grads(lambda *a: chunked_siglip_loss(*a, offset=offset, chunk_size=chunk), args, weight=1.7)
    _close(ours, _value_and_grads(lambda *a: naive_siglip(*a, offset=offset), args, weight=1.7))


def test_siglip_needs_bias():
    img, txt, scale, _ = _inputs(4)
    for fn in (siglip_loss, chunked_siglip_loss):
        with pytest.raises(ValueError, match="bias"):
            fn(img, txt, scale, None)


def test_distributed_falls_back_to_single_process():
    img, txt, scale, bias = _inputs(12)
    torch.testing.assert_close(distributed_clip_loss(img, txt, scale), naive_clip(img, txt, scale))
    torch.testing.assert_close(distributed_clip_loss(img, txt, scale, chunk_size=5), naive_clip(img, txt, scale))
    for chunk in (None, 5):
        torch.testing.assert_close(distributed_clip_loss(img, txt, scale, bias, loss="siglip", chunk_size=chunk),
                                   naive_siglip(img, txt, scale, bias))
    with pytest.raises(ValueError, match="bias"):
        distributed_clip_loss(img, txt, scale, loss="siglip")
    with pytest.raises(ValueError, match="unknown loss"):
        distributed_clip_loss(img, txt, scale, loss="infonce")


def test_chunked_clip_at_4096_dim_512():
    args = list(_inputs(4096, d=512, seed=1)[:3])
    _close(_value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=1000), args),
           _value_and_grads(naive_clip, args))


@pytest.mark.slow
def test_chunked_clip_at_16384_dim_512():
    args = list(_inputs(16384, d=512, seed=3, scale=100.0)[:3])
    _close(_value_and_grads(lambda *a: chunked_clip_loss(*a, chunk_size=4096), args),
           _value_and_grads(naive_clip, args))


def test_tiled_losses_ignore_autocast_and_accept_bf16():
    img, txt, scale, bias = _inputs(19, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = [chunked_clip_loss(img, txt, scale, chunk_size=5),
                chunked_siglip_loss(img, txt, scale, bias, chunk_size=5)]
    _close(ours, [naive_clip(img, txt, scale), naive_siglip(img, txt, scale, bias)])
    low = chunked_clip_loss(img.detach().bfloat16(), txt.detach().bfloat16(), scale, chunk_size=5)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, naive_clip(img.detach().bfloat16().float(), txt.detach().bfloat16().float(),
                                               scale), rtol=1e-5, atol=1e-5)
