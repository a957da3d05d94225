"""Forward hooks see what they would in a plain PyTorch model: every block and sub-module called, outputs that
nothing writes over afterwards, the same with and without autograd; without hooks the fast paths still run."""

import pytest
import torch
import torch.nn.functional as F

from cliplab.api import create_model
from cliplab.model import cpu_inference
from cliplab.model.hooks import hooks_active
from cliplab.model.layers import Block

WATCHED = ("", "attn", "mlp", "mlp.fc")  # "" is the block itself


def _model():
    torch.manual_seed(0)
    m = create_model("ViT-Tiny-32px").eval()
    for p in m.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return m


def _capture(blocks, run):
    """Each watched module's output (a clone taken later, once the whole forward finished) and a clone taken
    in the hook: equal unless something overwrote the output after its hook ran."""
    got = {}
    handles = [blk.get_submodule(name).register_forward_hook(
        lambda mod, args, out, key=(i, name): got.__setitem__(key, (out, out.detach().clone())))
        for i, blk in enumerate(blocks) for name in WATCHED]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {k: (out.detach().clone(), at_hook) for k, (out, at_hook) in got.items()}


def _plain_block(blk: Block, x: torch.Tensor, causal: bool) -> dict[str, torch.Tensor]:
    """A plain pre-LN block's outputs, by functional ops on the block's weights (no module calls)."""
    B, T, C = x.shape
    h = F.layer_norm(x, (C,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    q, k, v = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).view(B, T, 3, blk.attn.heads, -1).permute(
        2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, C)
    attn = F.linear(a, blk.attn.out.weight, blk.attn.out.bias)
    x = x + attn
    fc = F.linear(F.layer_norm(x, (C,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps), blk.mlp.fc.weight,
                  blk.mlp.fc.bias)
    mlp = F.linear(blk.mlp.act(fc), blk.mlp.proj.weight, blk.mlp.proj.bias)
    return {"attn": attn, "mlp.fc": fc, "mlp": mlp, "": x + mlp}


def _vision_reference(m, images):
    v = m.visual
    with torch.no_grad():
        x = v.patch_embed(images).flatten(2).transpose(1, 2)  # (B, g*g, C)
        x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
        x = v.ln_pre(x)
        ref = {}
        for i, blk in enumerate(v.transformer.blocks):
            outs = _plain_block(blk, x, causal=False)
            ref.update({(i, k): t for k, t in outs.items()})
            x = outs[""]
    return ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_tower_hooks_equal_grad_path_and_plain_reference(dtype):
    m = _model().to(dtype)
    images = torch.randn(2, 3, 32, 32, dtype=dtype)
    blocks = m.visual.transformer.blocks
    with_grad = _capture(blocks, lambda: m.encode_image(images))
    with torch.no_grad():
        out = m.encode_image(images)
        no_grad = _capture(blocks, lambda: m.encode_image(images))
        torch.testing.assert_close(m.encode_image(images), out)  # hooks gone: the fast path again, same result
    ref = _vision_reference(m, images)
    assert set(no_grad) == set(with_grad) == set(ref)  # every watched module of every block, the last included
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for key, (final, at_hook) in no_grad.items():
        assert torch.equal(final, at_hook), key  # not overwritten after the hook ran
        assert torch.equal(with_grad[key][0], with_grad[key][1]), key
        torch.testing.assert_close(final, with_grad[key][0], **tol)
        torch.testing.assert_close(final, ref[key], **tol)


def test_text_tower_hooks_fire_for_every_block_under_no_grad():
    m = _model()
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0], [49406, 7, 49407, 0, 0]])
    blocks = m.text.transformer.blocks
    with_grad = _capture(blocks, lambda: m.encode_text(tokens))
    with torch.no_grad():
        no_grad = _capture(blocks, lambda: m.encode_text(tokens))
    assert set(no_grad) == set(with_grad) == {(i, n) for i in range(len(blocks)) for n in WATCHED}
    for key, (final, at_hook) in no_grad.items():
        assert torch.equal(final, at_hook), key
        torch.testing.assert_close(final, with_grad[key][0], rtol=1e-4, atol=1e-5)


def test_global_forward_hook_takes_the_plain_path():
    m = _model()
    images = torch.randn(2, 3, 32, 32)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append((mod, out.clone())) if isinstance(mod, Block) else None)
    try:
        with torch.no_grad():
            m.encode_image(images)
    finally:
        handle.remove()
    assert [mod for mod, _ in seen] == list(m.visual.transformer.blocks)  # the last block too
    ref = _vision_reference(m, images)
    for i, (_, out) in enumerate(seen):
        torch.testing.assert_close(out, ref[(i, "")], rtol=1e-4, atol=1e-5)


def test_hook_on_a_module_swapped_in_after_a_call_is_seen():
    m = _model()
    tower = m.visual.transformer
    assert not hooks_active(tower)
    with torch.no_grad():
        m.encode_image(torch.randn(1, 3, 32, 32))
    new_fc = torch.nn.Linear(*reversed(tower.blocks[1].mlp.fc.weight.shape))
    tower.blocks[1].mlp.fc = new_fc
    assert not hooks_active(tower)
    handle = new_fc.register_forward_hook(lambda *a: None)
    assert hooks_active(tower)
    handle.remove()
    assert not hooks_active(tower)


def test_no_hooks_keeps_the_fast_path(monkeypatch):
    m = _model()
    calls = []
    real = cpu_inference._folded
    monkeypatch.setattr(cpu_inference, "_folded", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        m.encode_image(torch.randn(2, 3, 32, 32))
    assert calls  # the blocks before the last take the folded path


def test_a_hook_that_holds_its_model_does_not_keep_it_alive():
    """The hook-dict cache holds the dicts weakly: a feature extractor whose hook refers to the model would
    otherwise keep every model it ever watched."""
    import gc
    import weakref

    m = _model()
    feats = []
    m.visual.transformer.blocks[0].register_forward_hook(lambda mod, args, out, model=m: feats.append(out))
    with torch.no_grad():
        m.encode_image(torch.randn(2, 3, 32, 32))
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None and len(feats) == 1


def test_hooks_under_torch_compile_see_outputs_nothing_overwrites():
    """A compiled graph keeps our in-place writes: traced, the block writes nothing in place (inductor does
    where it may)."""
    torch._dynamo.reset()
    blk = _model().visual.transformer.blocks[0]
    x = torch.randn(2, 5, blk.ln_1.weight.shape[0])  # (B, T, C)
    compiled = torch.compile(blk, backend="aot_eager")
    with torch.no_grad():
        got = _capture([blk], lambda: compiled(x))
    assert got, "no hook ran"
    for key, (after, at_hook) in got.items():
        torch.testing.assert_close(after, at_hook, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
