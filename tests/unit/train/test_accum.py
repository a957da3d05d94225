"""Gradient caching: K micro-batches give exactly the gradient of one batch of K× the size."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cliplab.loss import chunked_clip_loss, clip_loss, siglip_loss
from cliplab.train.accum import cached_accumulation_step


class ToyCLIP(nn.Module):
    """Two small towers with the model interface cached_accumulation_step expects (log-scale ln(1/0.07))."""

    def __init__(self, dim=8, vocab=50, log_scale=2.6593, bias=None, dropout=0.0):
        super().__init__()
        self.visual = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, dim))
        self.token_embedding = nn.Embedding(vocab, 16)
        self.text_proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(16, dim))
        self.logit_scale = nn.Parameter(torch.tensor(log_scale))
        self.logit_bias = None if bias is None else nn.Parameter(torch.tensor(bias))

    def encode_image(self, images, normalize=False):
        x = self.visual(images)  # (N, dim)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens, normalize=False):
        x = self.text_proj(self.token_embedding(tokens).mean(dim=1))  # (N, dim)
        return F.normalize(x, dim=-1) if normalize else x


def _batch(n, seed=0, vocab=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, vocab, (n, 5), generator=g)


def _full_batch_grads(model, images, texts, loss_fn, max_scale=100.0):
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(texts, normalize=True)
    loss = loss_fn(img, txt, model.logit_scale.exp().clamp(max=max_scale), model.logit_bias)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return loss.detach(), grads


def _assert_rel(got, ref, name, tol=1e-5, floor=1e-7):
    """max |got - ref| ≤ tol · max |ref| (+ a float-noise floor for gradients that are zero in exact maths):
    a tensor-wide bound, blind to the reduction order of the host's GEMM kernels."""
    err, top = (got - ref).abs().max().item(), ref.abs().max().item()
    assert err <= tol * top + floor, f"{name}: max abs diff {err:.3g}, max |ref| {top:.3g}"


def _check(model, loss_fn, micro, images, texts):
    ref_loss, ref = _full_batch_grads(model, images, texts, loss_fn)
    loss = cached_accumulation_step(model, micro, loss_fn)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        _assert_rel(p.grad, ref[name], name)


def _split(images, texts, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((images[start : start + s], texts[start : start + s]))
        start += s
    return out


def _chunked(img, txt, scale, bias):
    return chunked_clip_loss(img, txt, scale, bias, chunk_size=4)


@pytest.mark.parametrize("loss_fn,bias", [(clip_loss, None), (clip_loss, -2.0), (siglip_loss, -10.0),
                                          (_chunked, None)])
def test_equals_full_batch(loss_fn, bias):
    torch.manual_seed(0)
    model = ToyCLIP(bias=bias)
    images, texts = _batch(12)
    _check(model, loss_fn, _split(images, texts, [5, 4, 3]), images, texts)
    assert model.logit_scale.grad.abs() > 0
    if loss_fn is siglip_loss:
        assert model.logit_bias.grad.abs() > 0


def test_accumulates_into_existing_grads():
    torch.manual_seed(0)
    model = ToyCLIP()
    images, texts = _batch(8)
    _, ref = _full_batch_grads(model, images, texts, clip_loss)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    cached_accumulation_step(model, _split(images, texts, [4, 4]), clip_loss)
    for name, p in model.named_parameters():
        _assert_rel(p.grad, ref[name] + 1, name)


def test_clamped_scale_gets_no_gradient():
    torch.manual_seed(0)
    model = ToyCLIP(log_scale=math.log(150.0))
    images, texts = _batch(6)
    _check(model, clip_loss, _split(images, texts, [3, 3]), images, texts)
    assert model.logit_scale.grad == 0


def test_dropout_is_replayed():
    """With dropout, step 3 must see the same masks as step 1: compare with a graph-keeping reference."""
    model = ToyCLIP(dropout=0.5)
    images, texts = _batch(9)
    micro = _split(images, texts, [4, 5])
    torch.manual_seed(1)
    parts = [(model.encode_image(i, normalize=True), model.encode_text(t, normalize=True)) for i, t in micro]
    after_ref = torch.rand(())
    ref = clip_loss(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                    model.logit_scale.exp().clamp(max=100), None)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)
    loss = cached_accumulation_step(model, micro, clip_loss)
    assert torch.rand(()) == after_ref  # the random stream advanced as if each micro-batch ran once
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        _assert_rel(p.grad, ref_grads[name], name)


def test_rejects_empty():
    with pytest.raises(ValueError, match="micro-batch"):
        cached_accumulation_step(ToyCLIP(), [], clip_loss)


def test_real_model_equals_full_batch():
    from cliplab.config import load_arch
    from cliplab.model.build import create_model

    torch.manual_seed(0)
    model = create_model(load_arch("ViT-Tiny-32px"))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=g)
    texts = torch.zeros(6, 32, dtype=torch.long)
    texts[:, 0], texts[:, 5] = 49406, 49407
    texts[:, 1:5] = torch.randint(1, 49000, (6, 4), generator=g)
    # 1e-5 (the bound), not 1e-6: the GEMM kernels block a 4-row and a 6-row batch differently, so
    # fp32 sums of ~1e-3 gradients round apart by ~1e-6 on some CPUs (1.2e-6 seen on a Xeon with AMX).
    _check(model, clip_loss, _split(images, texts, [4, 2]), images, texts)
    assert model.logit_scale.grad.abs() > 0


class _Wrapper(nn.Module):
    """Stands in for DDP: the model sits in ``.module`` and only ``forward`` is the wrapper's; ``no_sync`` counts
    its entries, and each backward through a forward records whether it ran inside ``no_sync``."""

    def __init__(self, model):
        super().__init__()
        self.module = model
        self.calls = 0
        self.no_sync_entries = 0
        self.in_no_sync = False
        self.backward_in_no_sync = []  # one flag per backward that reached a forward's image embeddings

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_entries += 1
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, images, texts):
        self.calls += 1
        img = self.module.encode_image(images, normalize=True)
        if img.requires_grad:
            img.register_hook(lambda g: self.backward_in_no_sync.append(self.in_no_sync))
        return img, self.module.encode_text(texts, normalize=True)


def test_wrapped_model_uses_embed_and_reads_temperature_from_module():
    torch.manual_seed(0)
    model = ToyCLIP(bias=-3.0)
    images, texts = _batch(10)
    _, ref = _full_batch_grads(model, images, texts, siglip_loss)
    wrapper = _Wrapper(model)
    with pytest.raises(ValueError, match="embed="):
        cached_accumulation_step(wrapper, _split(images, texts, [5, 5]), siglip_loss)
    cached_accumulation_step(wrapper, _split(images, texts, [6, 4]), siglip_loss, embed=wrapper)
    assert wrapper.calls == 4  # two micro-batches, embedded twice each
    for name, p in model.named_parameters():
        _assert_rel(p.grad, ref[name], name)


def test_wrapped_model_synchronises_only_the_last_backward():
    """Under DDP every micro-batch's backward but the last runs in ``no_sync()``: the last one all-reduces."""
    torch.manual_seed(0)
    model = ToyCLIP()
    images, texts = _batch(9)
    micro = _split(images, texts, [3, 3, 3])
    wrapper = _Wrapper(model)
    cached_accumulation_step(wrapper, micro, clip_loss, embed=wrapper)
    assert wrapper.no_sync_entries == len(micro) - 1
    assert wrapper.backward_in_no_sync == [True] * (len(micro) - 1) + [False]


def test_batch_norm_statistics_are_updated_once_per_micro_batch():
    """Step 1 embeds without a graph but in training mode: its BatchNorm updates are undone, so the running
    statistics are those of plain accumulation (one update per micro-batch), however the loss is cached."""
    from cliplab.api import create_model

    torch.manual_seed(0)
    model = create_model("RN-Tiny-64px")
    reference = create_model("RN-Tiny-64px")
    reference.load_state_dict(model.state_dict())
    images = torch.randn(8, 3, 64, 64)
    texts = torch.zeros(8, 32, dtype=torch.long)
    texts[:, 0], texts[:, 1], texts[:, 2] = 49406, 320, 49407
    micro = [(images[:4], texts[:4]), (images[4:], texts[4:])]
    cached_accumulation_step(model, micro, clip_loss)
    with torch.no_grad():
        for im, tx in micro:  # each micro-batch through the towers once, in training mode
            reference.encode_image(im), reference.encode_text(tx)
    for (name, got), want in zip(model.named_buffers(), reference.buffers(), strict=True):
        assert torch.equal(got, want), name
