"""compile_for_inference: the compiled image tower gives the eager tower's embeddings, only without autograd."""

import copy

import torch

from cliplab.api import create_model


def test_compiled_image_tower_matches_eager():
    torch.manual_seed(0)
    model = create_model("ViT-Tiny-32px").eval()
    keys = list(model.state_dict())
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        eager = model.encode_image(images, normalize=True)
        model.compile_for_inference()
        compiled = model.encode_image(images, normalize=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # a smaller batch is padded to the compiled size: same rows, no recompilation
        torch.testing.assert_close(model.encode_image(images[:3], normalize=True), eager[:3], rtol=1e-5, atol=1e-6)
    assert list(model.state_dict()) == keys  # the compiled tower is not a submodule
    out = model.encode_image(images)  # autograd on: the eager tower, so gradients flow
    assert out.requires_grad
    out.sum().backward()
    assert model.visual.proj.weight.grad is not None


def test_a_copy_of_a_compiled_model_uses_its_own_weights():
    model = create_model("ViT-Tiny-32px").eval().compile_for_inference()
    clone = copy.deepcopy(model)
    assert "_compiled_visual" not in clone.__dict__
    with torch.no_grad():
        clone.visual.proj.weight.mul_(2)
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(clone.encode_image(images), clone.visual(images))


def test_weights_changed_after_compiling_are_noticed():
    import pytest

    from cliplab.errors import CliplabWarning

    torch.manual_seed(0)
    model = create_model("ViT-Tiny-32px").eval().compile_for_inference()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.encode_image(images)  # compiled with the weights of now
        model.load_state_dict({k: v * 1.5 if k == "visual.proj.weight" else v for k, v in model.state_dict().items()})
        with pytest.warns(CliplabWarning, match="weights or buffers changed after compile_for_inference"):
            got = model.encode_image(images)
        torch.testing.assert_close(got, model.visual(images))  # the new weights, run eagerly
        assert "_compiled_visual" not in model.__dict__


def test_resnet_buffers_changed_after_compiling_are_noticed_and_train_mode_runs_eagerly():
    import pytest

    from cliplab.errors import CliplabWarning

    torch.manual_seed(0)
    model = create_model("RN-Tiny-64px").eval().compile_for_inference()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.encode_image(images)  # compiled with the running statistics of now (batch 4)
        model.train()  # BatchNorm on the batch's own statistics: not the compiled graph, and no zero padding
        torch.testing.assert_close(model.encode_image(images[:2]), copy.deepcopy(model).visual(images[:2]))
        model.eval()
        for name, buffer in model.visual.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.5)
        with pytest.warns(CliplabWarning, match="weights or buffers changed after compile_for_inference"):
            got = model.encode_image(images)
        torch.testing.assert_close(got, model.visual(images))


def _fake_compiled(model):
    """The compiled tower replaced by a recording stand-in (compiling takes seconds): which tower ran."""
    calls = []
    model.compile_for_inference()  # stamps the weights; torch.compile itself compiles on the first call only
    model.__dict__["_compiled_visual"] = lambda images: calls.append(1) or model.visual(images)
    return calls


def test_a_step_of_another_models_optimizer_keeps_the_compiled_tower():
    import warnings

    import pytest

    from cliplab.errors import CliplabWarning

    model = create_model("ViT-Tiny-32px").eval()
    calls = _fake_compiled(model)
    images = torch.randn(2, 3, 32, 32)
    probe = torch.nn.Linear(4, 2)
    for fused in (False, True):
        opt = torch.optim.AdamW(probe.parameters(), lr=0.1, fused=fused)
        probe(torch.randn(3, 4)).sum().backward()
        opt.step()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode_image(images)
    assert calls == [1]
    opt = torch.optim.AdamW(model.visual.parameters(), lr=0.1, fused=True)  # a step on the tower's own weights
    model.encode_image(images).sum().backward()
    opt.step()
    with torch.no_grad(), pytest.warns(CliplabWarning, match="weights or buffers changed"):
        model.encode_image(images)
    assert calls == [1] and "_compiled_visual" not in model.__dict__


def test_forward_hooks_run_the_eager_tower_and_keep_the_compiled_one():
    model = create_model("ViT-Tiny-32px").eval()
    calls = _fake_compiled(model)
    seen = []
    handle = model.visual.transformer.blocks[0].register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32))
        assert seen == [1] and calls == []
        handle.remove()
        model.encode_image(torch.randn(2, 3, 32, 32))
    assert seen == [1] and calls == [1]
