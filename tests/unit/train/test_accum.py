"""Gradient caching: K micro-batches give exactly the gradient of one batch of K× the size."""

import pytest
import torch

from cliplab.api import create_model
from cliplab.loss import clip_loss, siglip_loss
from cliplab.train.step import cached_accumulation_step


def _batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    texts = torch.zeros(n, 32, dtype=torch.long)
    texts[:, 0] = 49406
    texts[:, 1:5] = torch.randint(1, 49000, (n, 4), generator=g)
    texts[:, 5] = 49407
    return images, texts


@pytest.mark.parametrize("arch,loss", [("ViT-Tiny-32px", "clip"), ("ViT-Tiny-32px-CBOW", "siglip")])
def test_cached_accumulation_equals_full_batch(arch, loss):
    torch.manual_seed(0)
    model = create_model(arch)
    if loss == "siglip":
        model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
        fn = siglip_loss
    else:
        fn = clip_loss
    images, texts = _batch(12)
    out = model(images, texts)
    ref = fn(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias)
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    micro = [(images[:5], texts[:5]), (images[5:9], texts[5:9]), (images[9:], texts[9:])]  # uneven
    loss_value = cached_accumulation_step(model, micro, fn)
    torch.testing.assert_close(loss_value, ref.detach(), rtol=1e-5, atol=1e-6)
    for n, g in ref_grads.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, rtol=1e-5, atol=1e-6, msg=n)
    assert model.logit_scale.grad is not None
