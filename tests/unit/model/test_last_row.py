"""The last block computed at one position per sample (the pooled token) equals the full stack's output there,
forward and backward, in float64 — with and without the causal mask, rows anywhere, gradient checkpointing."""

import pytest
import torch

from cliplab.model.layers import Transformer


def _pair(layers: int = 3):
    torch.manual_seed(0)
    net = Transformer(32, layers, 4, 4.0, "quick_gelu", 1e-5).double()
    for p in net.parameters():  # biases are zero at init: give them values so their slicing is tested
        p.data.add_(0.1 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_row_equals_full_output_forward_and_backward(causal, checkpointing):
    net = _pair()
    net.grad_checkpointing = checkpointing
    x = torch.randn(5, 9, 32, dtype=torch.float64)
    row = torch.tensor([0, 8, 3, 3, 5])
    xf = x.clone().requires_grad_()
    full = net(xf, causal=causal)[torch.arange(5), row]  # (B, C)
    g = torch.randn_like(full)
    full.backward(g)
    ref_grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    xr = x.clone().requires_grad_()
    out = net(xr, causal=causal, row=row)
    assert out.shape == (5, 32)
    torch.testing.assert_close(out, full.detach(), rtol=1e-12, atol=1e-12)
    out.backward(g)
    torch.testing.assert_close(xr.grad, xf.grad, rtol=1e-12, atol=1e-12)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-12, atol=1e-12, msg=name)


def test_causal_row_ignores_later_positions():
    net = _pair(layers=2)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    row = torch.tensor([2, 4])
    y = net(x, causal=True, row=row)
    x2 = x.clone()
    x2[0, 3:], x2[1, 5:] = 7.0, -7.0  # change only what comes after each row
    torch.testing.assert_close(net(x2, causal=True, row=row), y, rtol=0, atol=0)


def test_one_layer_stack():
    net = _pair(layers=1)
    x = torch.randn(3, 4, 32, dtype=torch.float64)
    row = torch.tensor([1, 0, 3])
    torch.testing.assert_close(net(x, row=row), net(x)[torch.arange(3), row], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_row_equals_full_output_in_inference(causal):
    """Without autograd the attention goes through SDPA (with a boolean mask for the causal row)."""
    net = _pair()
    x = torch.randn(4, 7, 32, dtype=torch.float64)
    row = torch.tensor([6, 0, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(net(x, causal=causal, row=row), net(x, causal=causal)[torch.arange(4), row],
                                   rtol=1e-12, atol=1e-12)
