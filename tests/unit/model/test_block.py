"""The block's fast paths (QuickGELU folded into the GEMMs, in-place activation and residuals, the CPU inference
paths of ``cpu_inference``) equal a naive pre-LN block on the same weights, in float64, forward and backward, in
training and in inference."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from cliplab.model import cpu_inference
from cliplab.model.layers import Block, Transformer


def _naive(block: Block, x: torch.Tensor, act: str, causal: bool = False) -> torch.Tensor:
    def mlp(h):
        h = F.linear(h, block.mlp.fc.weight, block.mlp.fc.bias)
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else F.gelu(h, approximate=block.mlp.act.approximate)
        return F.linear(h, block.mlp.proj.weight, block.mlp.proj.bias)

    def attn(h):
        B, T, C = h.shape
        nh = block.attn.heads
        q, k, v = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).view(B, T, 3, nh, C // nh).permute(
            2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
        s = q @ k.transpose(-1, -2) / (C // nh) ** 0.5  # (B, nh, T, T)
        if causal:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        w = s.softmax(-1)
        return F.linear((w @ v).transpose(1, 2).reshape(B, T, C), block.attn.out.weight, block.attn.out.bias)

    x = x + attn(F.layer_norm(x, x.shape[-1:], block.ln_1.weight, block.ln_1.bias, block.ln_1.eps))
    return x + mlp(F.layer_norm(x, x.shape[-1:], block.ln_2.weight, block.ln_2.bias, block.ln_2.eps))


def _block(act: str) -> Block:
    torch.manual_seed(0)
    block = Block(32, 4, 4.0, "gelu" if act == "gelu_tanh" else act, 1e-5).double()
    if act == "gelu_tanh":
        block.mlp.act.approximate = "tanh"
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


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_tanh"])
def test_block_inference_equals_naive_and_leaves_input_alone(act, causal):
    """Without autograd the ``folded`` path runs: the key bias dropped, the value bias moved, GEMMs accumulating."""
    block = _block(act)
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    x0 = x.clone()
    with torch.no_grad():
        assert cpu_inference.inference_path(block, x) is cpu_inference._folded
        y = block(x, causal=causal)
        ref = _naive(block, x, act, causal)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, x0)


def test_inference_path_choice():
    block = _block("quick_gelu").float()
    x = torch.randn(2, 5, 32)
    path = cpu_inference.inference_path
    assert path(block, x) is None  # autograd records: the parameters require grad
    with torch.no_grad():
        assert path(block, x) is cpu_inference._folded
        assert path(block, x.to("meta")) is None
        with torch.autocast("cpu", dtype=torch.float16):
            assert path(block, x) is None
    block.requires_grad_(False)
    assert path(block, x) is cpu_inference._folded  # a frozen block on an input that needs no gradient
    assert path(block, x.requires_grad_()) is None


onednn = pytest.mark.skipif(not cpu_inference._onednn_bf16(), reason="this CPU has no oneDNN bf16 support")


def _plain(block: Block, x: torch.Tensor, causal: bool, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr("cliplab.model.layers.inference_path", lambda block, x: None)
        return block(x, causal=causal)


@onednn
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("mode", ["autocast-fp32-stream", "autocast-bf16-stream", "bf16-model"])
def test_onednn_path_equals_naive_within_bf16_rounding(act, causal, mode, monkeypatch):
    block = _block(act).float()
    x = torch.randn(4, 9, 32)
    ref = _naive(block.double(), x.double(), act, causal)
    block = block.float()
    if mode == "bf16-model":
        block, x = block.bfloat16(), x.bfloat16()
    elif mode == "autocast-bf16-stream":
        x = x.bfloat16()
    x0 = x.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "bf16-model"):
        assert cpu_inference.inference_path(block, x) is cpu_inference._onednn
        y = block(x, causal=causal)
        plain = _plain(block, x, causal, monkeypatch)
    assert y.dtype == x.dtype == plain.dtype
    assert torch.equal(x, x0)
    scale = ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= 0.02 * scale
    # no further from the float64 truth than the plain bf16 path, give or take one bf16 rounding step
    assert (y.double() - ref).abs().max().item() <= (plain.double() - ref).abs().max().item() + 2**-8 * scale


@onednn
def test_onednn_weights_packed_again_after_a_weight_changes():
    block = _block("quick_gelu").float()
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        block(x)
        block.mlp.proj.weight.mul_(-1)  # in place, as an optimizer step or load_state_dict does
        y = block(x)
        ref = _naive(block.double(), x.double(), "quick_gelu")
        assert (y.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()
        block.float()
        block.mlp.fc.weight = torch.nn.Parameter(2 * block.mlp.fc.weight)  # a new tensor, version 0
        y = block(x)
        ref = _naive(block.double(), x.double(), "quick_gelu")
        assert (y.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()
        block.float()
        block(x)  # packed for the float weights
        block.mlp.proj.weight.data.mul_(3)  # through .data: the version counter does not move
        y = block(x)
        ref = _naive(block.double(), x.double(), "quick_gelu")
        assert (y.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()


@onednn
def test_onednn_weights_packed_again_after_a_fused_optimizer_step(monkeypatch):
    """Fused AdamW (what the trainer uses) writes weights without bumping their version counters."""
    block = _block("gelu").float()
    x = torch.randn(2, 5, 32)
    opt = torch.optim.AdamW(block.parameters(), lr=0.5, fused=True)
    for _ in range(2):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
            plain = _plain(block, x, False, monkeypatch)
        torch.testing.assert_close(y, plain, rtol=0.05, atol=0.05 * plain.abs().max().item())
        block(x).square().sum().backward()
        opt.step()  # its kernel leaves the version counters alone: the step hook bumps them


@onednn
def test_block_copies_and_pickles_after_onednn_inference():
    """The packed weights are opaque oneDNN tensors: copies and pickles leave them out and pack their own."""
    block = _block("gelu").float()
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
        for other in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
            assert "_onednn_weights" not in other.__dict__
            assert torch.equal(other(x), y)
    assert set(block.state_dict()) == set(other.state_dict())


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


@pytest.mark.parametrize("causal", [False, True])
def test_stack_inference_reuses_buffers_and_equals_naive(causal):
    """Blocks of one stack share a workspace: each call's output stays its own, the input is left alone."""
    torch.manual_seed(0)
    stack = Transformer(32, 3, 4, 4.0, "quick_gelu", 1e-5).double()
    for p in stack.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 7, 32, dtype=torch.float64)
    x0 = x.clone()
    ref = x
    for block in stack.blocks:
        ref = _naive(block, ref, "quick_gelu", causal)
    with torch.no_grad():
        y = stack(x, causal=causal)
        y_again = stack(2 * x, causal=causal)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, x0)
    assert not torch.equal(y, y_again)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)  # not overwritten by the second call


def test_optimizer_hook_is_registered_with_the_first_cache_not_at_import():
    import subprocess
    import sys

    code = (
        "import torch, cliplab.api\n"
        "from cliplab.model import cpu_inference as ci\n"
        "assert ci._OptimizerSteps._handle is None, 'registered at import'\n"
        "w = torch.nn.Parameter(torch.ones(3))\n"
        "stamp = ci._stamp([w])\n"
        "assert ci._OptimizerSteps._handle is not None\n"
        "opt = torch.optim.AdamW([w], lr=0.1, fused=True)\n"
        "w.sum().backward(); opt.step()\n"
        "assert not ci._unchanged(stamp, [w])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_step_of_another_optimizer_leaves_a_stamp_valid():
    w = torch.nn.Parameter(torch.ones(3))
    stamp = cpu_inference._stamp([w])
    other = torch.nn.Parameter(torch.ones(3))
    for fused in (False, True):
        opt = torch.optim.AdamW([other], lr=0.1, fused=fused)
        other.sum().backward()
        opt.step()
    assert cpu_inference._unchanged(stamp, [w])
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    w.sum().backward()
    version = w._version
    opt.step()
    assert w._version > version  # the fused kernel does not bump it: the step hook does
    assert not cpu_inference._unchanged(stamp, [w])


def test_the_step_hook_marks_only_what_a_fused_step_wrote():
    """A parameter without a gradient is left alone by a step: a graph that saved it before the step must
    still run backward after it, as it does without the hook."""
    cpu_inference._stamp([])  # installs the hook, as the first cache does
    stepped, idle, z = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    for fused in (False, True):
        opt = torch.optim.AdamW([stepped, idle], lr=0.1, fused=fused)
        pending = (idle * z).sum()  # saves idle (and z) for its backward
        stepped.sum().backward()
        opt.step()
        pending.backward()  # raised "modified by an inplace operation" when the hook marked idle too
        assert torch.equal(z.grad, idle.detach()) and idle.grad is not None
        stepped.grad = idle.grad = z.grad = None


def test_stamped_weights_can_still_be_swapped():
    """A cache's stamp must not hold weak references: torch.utils.swap_tensors refuses tensors that have one,
    and `.to` / `load_state_dict` swap under torch.__future__.set_swap_module_params_on_conversion(True)."""
    from cliplab.api import create_model

    model = create_model("ViT-Tiny-32px").eval().compile_for_inference()  # stamps the image tower's weights
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
        model.load_state_dict({k: v.double() for k, v in state.items()})
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
    assert model.visual.proj.weight.dtype == torch.float64
    stamp = model.__dict__["_compiled_stamp"]
    assert not cpu_inference._unchanged(stamp, list(model.visual.parameters()))  # swapped: the cache is stale
