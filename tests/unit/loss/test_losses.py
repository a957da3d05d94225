"""Every loss variant against a naive five-line reference, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from cliplab.loss import chunked_clip_loss, clip_loss, distributed_clip_loss, siglip_loss


def naive_clip(img, txt, scale, bias=None):
    logits = scale * img @ txt.T + (0 if bias is None else bias)
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def naive_siglip(img, txt, scale, bias):
    z = 2 * torch.eye(len(img)) - 1
    return -F.logsigmoid(z * (scale * img @ txt.T + bias)).sum() / len(img)


def _inputs(n, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g, dtype=dtype) + 0.5 * img.detach(), dim=-1).requires_grad_()
    scale = torch.tensor(14.3, dtype=dtype, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=dtype, requires_grad=True)
    return img, txt, scale, bias


def _grads(fn, *args):
    loss = fn(*args)
    return [loss.detach()] + list(torch.autograd.grad(loss, [a for a in args if a.requires_grad]))


def _close(a, b, tol=1e-5):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_loss(with_bias):
    img, txt, scale, bias = _inputs(10)
    args = (img, txt, scale, bias) if with_bias else (img, txt, scale)
    _close(_grads(clip_loss, *args), _grads(naive_clip, *args))


def test_siglip_loss():
    img, txt, scale, bias = _inputs(9)
    _close(_grads(siglip_loss, img, txt, scale, bias), _grads(naive_siglip, img, txt, scale, bias))


@pytest.mark.parametrize("n,chunk", [(37, 8), (37, 1), (37, 100), (64, 16), (50, 49)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_equals_naive(n, chunk, with_bias):
    img, txt, scale, bias = _inputs(n, seed=n + chunk)
    b = bias if with_bias else None
    ours = _grads(lambda i, t, s, *rest: chunked_clip_loss(i, t, s, rest[0] if rest else None, chunk),
                  *([img, txt, scale, b] if with_bias else [img, txt, scale]))
    ref = _grads(naive_clip, *([img, txt, scale, b] if with_bias else [img, txt, scale]))
    _close(ours, ref)


def test_chunked_large_logits_stable():
    img, txt, _, _ = _inputs(40)
    scale = torch.tensor(100.0, requires_grad=True)
    _close(_grads(lambda i, t, s: chunked_clip_loss(i, t, s, chunk_size=7), img, txt, scale),
           _grads(naive_clip, img, txt, scale))


def test_distributed_falls_back_to_single_process():
    img, txt, scale, bias = _inputs(12)
    torch.testing.assert_close(distributed_clip_loss(img, txt, scale), naive_clip(img, txt, scale))
    torch.testing.assert_close(distributed_clip_loss(img, txt, scale, chunk_size=5), naive_clip(img, txt, scale))
    torch.testing.assert_close(distributed_clip_loss(img, txt, scale, bias, loss="siglip"),
                               naive_siglip(img, txt, scale, bias))
    with pytest.raises(ValueError, match="bias"):
        distributed_clip_loss(img, txt, scale, loss="siglip")


def test_chunked_at_4096():
    img, txt, scale, _ = _inputs(4096, d=512)
    _close(_grads(lambda i, t, s: chunked_clip_loss(i, t, s, chunk_size=1000), img, txt, scale),
           _grads(naive_clip, img, txt, scale))
