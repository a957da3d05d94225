"""Generic model tests over every architecture file (small ones run for real, big ones on meta)."""

import copy
import math

import pytest
import torch

from cliplab.api import list_models
from cliplab.config import arch_names, load_arch
from cliplab.model.build import create_model
from cliplab.model.layers import QuickGELU
from cliplab.model.text_transformer import eot_positions

SMALL = [n for n in arch_names() if "Tiny" in n or "Small" in n]
OPENAI_PARAMS = {  # parameter counts of OpenAI's released models
    "ViT-B-32": 151_277_313,
    "ViT-B-16": 149_620_737,
    "ViT-L-14": 427_616_513,
    "RN50": 102_007_137,
    "RN101": 119_688_033,
}


def _inputs(cfg, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    texts = torch.zeros(n, cfg.text.context_length, dtype=torch.long)
    for i in range(n):
        length = 3 + i
        texts[i, 0] = 49406
        texts[i, 1:length] = torch.randint(1, 49000, (length - 1,), generator=g)
        texts[i, length] = cfg.text.eot_token_id
    return images, texts


@pytest.mark.parametrize("name", SMALL)
def test_forward_shapes_no_nan_all_grads(name):
    torch.manual_seed(0)
    cfg = load_arch(name)
    model = create_model(cfg)
    images, texts = _inputs(cfg)
    out = model(images, texts)
    assert out.image_embeds.shape == (3, cfg.embed_dim)
    assert out.text_embeds.shape == (3, cfg.embed_dim)
    assert out.logits_per_image.shape == (3, 3)
    assert torch.allclose(out.logits_per_text, out.logits_per_image.T)
    assert torch.isfinite(out.logits_per_image).all()
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    loss = out.logits_per_image.logsumexp(-1).mean() - out.logits_per_image.diag().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", SMALL)
def test_grad_checkpointing_same_output(name):
    torch.manual_seed(0)
    cfg = load_arch(name)
    model = create_model(cfg).train()
    images, texts = _inputs(cfg)
    ref = model(images, texts)
    ref_loss = ref.logits_per_image.sum()
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(images, texts)
    torch.testing.assert_close(out.logits_per_image, ref.logits_per_image)
    out.logits_per_image.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], msg=n)


def test_grad_checkpointing_updates_batchnorm_statistics_once():
    """Backward recomputes a checkpointed ResNet stage in train mode; that must not update the running
    statistics a second time."""
    torch.manual_seed(0)
    cfg = load_arch("RN-Tiny-64px")
    plain = create_model(cfg).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing(True)
    images, texts = _inputs(cfg)
    for model in (plain, checkpointed):
        model(images, texts).logits_per_image.sum().backward()
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers(), strict=True):
        assert torch.equal(a, b), name
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_openai_parameter_counts():
    counts = {row["name"]: row["params"] for row in list_models()}
    for name, n in OPENAI_PARAMS.items():
        assert counts[name] == n


def test_logit_scale_init_and_cap():
    model = create_model(load_arch("ViT-Tiny-32px"))
    assert math.isclose(model.scale().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == 100.0
    model.clamp_logit_scale()
    assert math.isclose(model.logit_scale.item(), math.log(100), rel_tol=1e-6)


def test_text_pools_at_first_end_of_text():
    torch.manual_seed(0)
    cfg = load_arch("ViT-Tiny-32px")
    model = create_model(cfg).eval()
    _, texts = _inputs(cfg, n=1)
    a = model.encode_text(texts)
    texts2 = texts.clone()
    texts2[0, 10:] = 123  # tokens after end-of-text never reach the pooled feature (causal mask)
    torch.testing.assert_close(model.encode_text(texts2), a)


def test_text_without_end_of_text_pools_at_the_last_position():
    """A row with no end-of-text token (cut by hand, or another tokenizer) is pooled at its last position."""
    assert eot_positions(torch.tensor([[5, 6, 7]]), 49407).tolist() == [2]
    assert eot_positions(torch.tensor([[5, 49407, 7, 49407], [5, 6, 7, 8]]), 49407).tolist() == [1, 3]
    torch.manual_seed(0)
    cfg = load_arch("ViT-Tiny-32px")
    model = create_model(cfg).eval()
    tokens = torch.randint(1, 49000, (1, cfg.text.context_length))  # no end-of-text anywhere
    text = model.text
    with torch.no_grad():
        x = text.token_embedding(tokens) + text.positional_embedding  # (1, L, C)
        want = text.proj(text.ln_final(text.transformer(x, causal=True)[:, -1]))  # every position, last pooled
        got = model.encode_text(tokens)
    err, top = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= 1e-5 * top, f"max abs diff {err:.3g}, max |value| {top:.3g}"


def test_cbow_ignores_padding_after_eot():
    torch.manual_seed(0)
    cfg = load_arch("ViT-Tiny-32px-CBOW")
    model = create_model(cfg).eval()
    _, texts = _inputs(cfg, n=2)
    texts2 = texts.clone()
    texts2[:, -3:] = 77
    torch.testing.assert_close(model.encode_text(texts2), model.encode_text(texts))


def test_quick_gelu():
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    cfg = load_arch("ViT-Tiny-32px")
    model = create_model(cfg).eval()
    images, texts = _inputs(cfg)
    with torch.no_grad():
        ref = model(images, texts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, texts)
    assert (low.image_embeds.float() - ref.image_embeds).abs().max() < 5e-2
    assert (low.text_embeds.float() - ref.text_embeds).abs().max() < 5e-2


def test_padding_trim_is_exact():
    """Rows encoded alone (context trimmed to their end-of-text) equal rows encoded beside a full-length one."""
    torch.manual_seed(0)
    cfg = load_arch("ViT-Tiny-32px")
    model = create_model(cfg).eval()
    _, texts = _inputs(cfg, n=3)
    full = torch.randint(1, 49000, (1, cfg.text.context_length))
    full[0, -1] = cfg.text.eot_token_id  # forces the whole context to be computed
    with torch.no_grad():
        alone = model.encode_text(texts)
        beside = model.encode_text(torch.cat([texts, full]))[:3]
    # relative to the largest value, as the parity tests: the GEMM kernels block a 3-row short context and a
    # 4-row full one differently, so fp32 sums round apart by ~1e-6 (more with one thread); a trim that changed
    # what a row attends to would be off by O(1)
    err, top = (alone - beside).abs().max().item(), beside.abs().max().item()
    assert err <= 1e-5 * top, f"max abs diff {err:.3g}, max |value| {top:.3g}"


@pytest.mark.parametrize("name", ["ViT-Tiny-32px", "RN-Tiny-64px"])
def test_pixels_meet_a_cast_model_in_its_dtype(name):
    """A model cast to another dtype (``model.half()`` on CUDA; float64 here) takes float32 pixels, as
    OpenAI's casts them, through every image path."""
    import numpy as np

    from cliplab.eval.linear_probe import extract_features
    from cliplab.eval.zeroshot import zero_shot_evaluate
    from cliplab.infer.embed import embed_images

    torch.manual_seed(0)
    model = create_model(load_arch(name)).eval().double()
    s = model.cfg.vision.image_size
    images = torch.randn(3, 3, s, s)
    with torch.no_grad():
        want = model.encode_image(images.double())
        assert torch.equal(model.encode_image(images), want)
        feats, _ = extract_features(model, [(images, torch.tensor([0, 1, 0]))])
        result = zero_shot_evaluate(model, torch.eye(model.cfg.embed_dim)[:, :2], [(images, torch.tensor([0, 1, 0]))])
    assert result.n == 3
    torch.testing.assert_close(feats, torch.nn.functional.normalize(want, dim=-1).float())
    np.testing.assert_allclose(embed_images(list(images), model, preprocess=lambda x: x, normalize=False),
                               want.float().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ViT-Tiny-32px", "RN-Tiny-64px"])
@pytest.mark.parametrize("grad", [False, True])
def test_an_empty_image_batch_gives_no_embeddings(name, grad):
    model = create_model(load_arch(name)).eval()
    s = model.image_size
    with torch.set_grad_enabled(grad):
        out = model.encode_image(torch.zeros(0, 3, s, s))
    assert out.shape == (0, model.cfg.embed_dim)


def test_argmax_pooling_takes_the_first_highest_id():
    """``pool="argmax"`` (OpenAI's and open_clip's rule, HF's legacy configs): the position of the highest id."""
    import dataclasses

    from cliplab.model.text_transformer import pool_positions

    arch = load_arch("ViT-Tiny-32px")
    text = dataclasses.replace(arch.text, vocab_size=100, eot_token_id=99, pool="argmax")
    tokens = torch.tensor([[98, 5, 99, 0, 0], [98, 5, 97, 2, 0], [1, 97, 3, 97, 0]])
    assert pool_positions(tokens, text).tolist() == [2, 0, 1]
    torch.manual_seed(0)
    model = create_model(dataclasses.replace(arch, text=text)).eval()
    t = model.text
    with torch.no_grad():
        x = t.token_embedding(tokens) + t.positional_embedding[: tokens.shape[1]]  # (B, L, C)
        want = t.proj(t.ln_final(t.transformer(x, causal=True)[torch.arange(3), torch.tensor([2, 0, 1])]))
        torch.testing.assert_close(model.encode_text(tokens), want, rtol=1e-5, atol=1e-6)
