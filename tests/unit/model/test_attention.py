"""The attention kernel choice (explicit matmul-softmax-matmul when training on short CPU sequences, SDPA
otherwise) changes speed, not results."""

import pytest
import torch
import torch.nn.functional as F

from cliplab.model.layers import Attention, _attention, _explicit_attention, _explicit_is_faster


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


def test_kernel_choice():
    q = torch.randn(2, 4, 65, 16, requires_grad=True)
    assert _explicit_is_faster(q, q)
    assert not _explicit_is_faster(torch.randn(2, 4, 300, 16, requires_grad=True), torch.randn(2, 4, 300, 16))
    assert not _explicit_is_faster(q.detach(), q.detach())  # inference: SDPA's forward is faster
    with torch.no_grad():
        assert not _explicit_is_faster(q, q)


@pytest.mark.parametrize("causal", [False, True])
def test_explicit_equals_sdpa_in_fp32_forward_and_backward(causal):
    torch.manual_seed(1)
    q, k, v = (torch.randn(3, 4, 17, 16, requires_grad=True) for _ in range(3))
    mask = torch.rand(3, 1, 17, 17) > 0.3
    mask[..., 0] = True  # every query attends somewhere
    g = torch.randn(3, 4, 17, 16)
    outs = []
    for fn in (_explicit_attention, lambda *a: F.scaled_dot_product_attention(*a[:3], attn_mask=a[4], is_causal=a[3])):
        y = fn(q, k, v, causal, mask)
        grads = torch.autograd.grad(y, (q, k, v), g)
        outs.append((y, *grads))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_inference_path_matches_reference_in_bf16():
    torch.manual_seed(2)
    q, k, v = (torch.randn(4, 4, 50, 32) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.no_grad():
        y = _attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert (y.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()
