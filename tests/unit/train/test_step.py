"""One training step with an fp16-style gradient scaler gives the gradients of the unscaled step, with and
without gradient-cached accumulation. (fp16 autocast itself needs CUDA; the scaler's plumbing does not.)"""

import copy

import pytest
import torch

from cliplab.config import load_arch
from cliplab.loss import clip_loss
from cliplab.model.build import create_model
from cliplab.train.step import train_step


def _batch(n: int = 6):
    g = torch.Generator().manual_seed(0)
    texts = torch.zeros(n, 32, dtype=torch.long)
    texts[:, 0], texts[:, 5] = 49406, 49407
    texts[:, 1:5] = torch.randint(1, 49000, (n, 4), generator=g)
    return torch.randn(n, 3, 32, 32, generator=g), texts


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_scaled_step_equals_unscaled_step(accum_steps):
    torch.manual_seed(0)
    plain = create_model(load_arch("ViT-Tiny-32px"))
    scaled = copy.deepcopy(plain)
    images, texts = _batch()
    results = []
    for model, scaler in ((plain, None), (scaled, torch.amp.GradScaler("cpu", init_scale=2.0**12))):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = train_step(model, images, texts, opt, clip_loss, accum_steps=accum_steps, device=torch.device("cpu"),
                         scaler=scaler)
        results.append(out)
        if scaler is not None:
            assert scaler.get_scale() == 2.0**12  # finite gradients: the step was taken, the scale kept
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert results[0]["grad_norm"] == pytest.approx(results[1]["grad_norm"], rel=1e-5)
    for (name, a), b in zip(plain.named_parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def test_unwrap_never_asks_a_module_for_its_truth_value():
    """DDP around a torch.compile'd model: the compiled wrapper has no len(), so ``module or ...`` broke."""
    from torch import nn

    from cliplab.train.step import unwrap

    inner = nn.Linear(2, 2)

    class NoBool(nn.Module):
        def __init__(self):
            super().__init__()
            self._orig_mod = inner

        def __bool__(self):
            raise TypeError("no truth value")

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = NoBool()

    assert unwrap(Wrapper()) is inner


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_an_fp16_step_whose_loss_or_gradients_overflow_is_skipped(accum_steps):
    """With a grad scaler, a non-finite loss (an fp16 forward that overflowed) is skipped as overflowing
    gradients are: no update, a lower scale, ``skipped`` said. Without one it stays an error."""
    import math

    torch.manual_seed(0)
    model = create_model(load_arch("ViT-Tiny-32px"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    images, texts = _batch()

    def overflowing(img, txt, scale, bias):
        return clip_loss(img, txt, scale, bias) * math.inf

    cpu = torch.device("cpu")
    train_step(model, images, texts, opt, clip_loss, accum_steps=accum_steps, device=cpu, scaler=scaler)
    before = copy.deepcopy(model.state_dict())  # one good step counted towards growth
    out = train_step(model, images, texts, opt, overflowing, accum_steps=accum_steps, device=cpu, scaler=scaler)
    assert out["skipped"] and not math.isfinite(out["loss"]) and scaler.get_scale() == 2.0**11
    assert scaler._get_growth_tracker() == 0  # as after overflowing gradients: no doubling back right away
    handle = model.logit_scale.register_hook(lambda g: torch.full_like(g, math.inf))  # finite loss, inf gradient
    out = train_step(model, images, texts, opt, clip_loss, accum_steps=accum_steps, device=cpu, scaler=scaler)
    handle.remove()
    assert out["skipped"] and math.isfinite(out["loss"]) and scaler.get_scale() == 2.0**10
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    out = train_step(model, images, texts, opt, clip_loss, accum_steps=accum_steps, device=cpu, scaler=scaler)
    assert not out["skipped"] and scaler.get_scale() == 2.0**10
    with pytest.raises(FloatingPointError, match="loss is inf"):
        train_step(model, images, texts, opt, overflowing, accum_steps=accum_steps, device=cpu)
