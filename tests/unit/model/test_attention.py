"""The attention kernel choice (math kernel for short low-precision CPU sequences) changes speed, not results."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from cliplab.model.layers import Attention, _math_is_faster


def _naive(x: torch.Tensor, attn: Attention, causal: bool) -> torch.Tensor:
    """Five-line reference in float64."""
    B, T, C = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, attn.heads, C // attn.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
    scores = q @ k.transpose(-1, -2) / (C // attn.heads) ** 0.5  # (B, nh, T, T)
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))  # (B, T, C)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T", [20, 65, 200])
def test_bf16_attention_matches_reference_forward_and_backward(T, causal):
    torch.manual_seed(0)
    attn = Attention(64, 4)
    x = torch.randn(3, T, 64)
    ref_attn = Attention(64, 4).double()
    ref_attn.load_state_dict(attn.state_dict())
    xr = x.double().requires_grad_()
    ref = _naive(xr, ref_attn, causal)
    g = torch.randn_like(ref)
    ref.backward(g)
    xb = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(xb, causal=causal)
    y.float().backward(g.float())
    scale = ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= 0.02 * scale
    assert (xb.grad.double() - xr.grad).abs().max().item() <= 0.03 * xr.grad.abs().max().item()
    for name, p in attn.named_parameters():
        rp = dict(ref_attn.named_parameters())[name]
        assert (p.grad.double() - rp.grad).abs().max().item() <= 0.03 * rp.grad.abs().max().item(), name


def test_math_kernel_equals_flash_kernel_in_bf16():
    torch.manual_seed(1)
    q, k, v = (torch.randn(4, 4, 65, 32, dtype=torch.bfloat16) for _ in range(3))
    assert _math_is_faster(q) and not _math_is_faster(q.float())
    assert not _math_is_faster(torch.randn(1, 1, 300, 8).bfloat16())  # long sequences keep the flash kernel
    outs = []
    for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION):
        with sdpa_kernel(backend):
            outs.append(F.scaled_dot_product_attention(q, k, v).float())
    assert (outs[0] - outs[1]).abs().max().item() <= 0.02
