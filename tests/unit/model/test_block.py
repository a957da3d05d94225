"""The block's fast paths (QuickGELU folded into the GEMMs, in-place activation and residuals) equal a naive
pre-LN block on the same weights, in float64, forward and backward, in training and in inference."""

import pytest
import torch
import torch.nn.functional as F

from cliplab.model.layers import Block


def _naive(block: Block, x: torch.Tensor, act: str) -> torch.Tensor:
    def mlp(h):
        h = F.linear(h, block.mlp.fc.weight, block.mlp.fc.bias)
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else F.gelu(h)
        return F.linear(h, block.mlp.proj.weight, block.mlp.proj.bias)

    def attn(h):
        B, T, C = h.shape
        nh = block.attn.heads
        q, k, v = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).view(B, T, 3, nh, C // nh).permute(
            2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
        w = (q @ k.transpose(-1, -2) / (C // nh) ** 0.5).softmax(-1)  # (B, nh, T, T)
        return F.linear((w @ v).transpose(1, 2).reshape(B, T, C), block.attn.out.weight, block.attn.out.bias)

    x = x + attn(F.layer_norm(x, x.shape[-1:], block.ln_1.weight, block.ln_1.bias, block.ln_1.eps))
    return x + mlp(F.layer_norm(x, x.shape[-1:], block.ln_2.weight, block.ln_2.bias, block.ln_2.eps))


def _block(act: str) -> Block:
    torch.manual_seed(0)
    block = Block(32, 4, 4.0, act, 1e-5).double()
    for p in block.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    return block


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_block_equals_naive_forward_and_backward(act):
    block = _block(act)
    x = torch.randn(3, 7, 32, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, 32, dtype=torch.float64)
    ref = _naive(block, x, act)
    ref_grads = torch.autograd.grad(ref, [x, *block.parameters()], g)
    y = block(x)
    grads = torch.autograd.grad(y, [x, *block.parameters()], g)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_block_inference_equals_naive_and_leaves_input_alone(act):
    block = _block(act)
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    x0 = x.clone()
    with torch.no_grad():
        y = block(x)
        ref = _naive(block, x, act)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, x0)


def test_frozen_block_with_trainable_input_gets_input_gradient():
    """A locked tower still passes gradient to its input: the in-place activation must not be used then."""
    block = _block("gelu").requires_grad_(False)
    x = torch.randn(2, 5, 32, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(block(x).sum(), x)
    (ref,) = torch.autograd.grad(_naive(block, x, "gelu").sum(), x)
    torch.testing.assert_close(gx, ref, rtol=1e-11, atol=1e-12)


def test_bf16_autocast_keeps_residual_stream_in_fp32():
    block = _block("quick_gelu").float()
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.float32
    with torch.no_grad():
        ref = _naive(block.double(), x.double(), "quick_gelu")
    assert (y.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()
