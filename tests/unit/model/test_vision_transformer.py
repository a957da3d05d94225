"""The ViT's patch embedding: on CPU one GEMM over the cut image, the same as the convolution it stands for."""

import pytest
import torch

from cliplab.config import ViTConfig
from cliplab.model.vision_transformer import VisionTransformer


@pytest.mark.parametrize("size", [(32, 32), (35, 41), (16, 48)])
def test_patches_as_one_gemm_equal_the_convolution_forward_and_backward(size):
    torch.manual_seed(0)
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=24, layers=1, heads=2), 16).double()
    images = torch.randn(3, 3, *size, dtype=torch.float64, requires_grad=True)
    ours = vit._patches(images)
    ref = vit.patch_embed(images).flatten(2).transpose(1, 2)  # (B, g*g, C), edges that fill no patch dropped
    assert ours.shape == ref.shape == (3, (size[0] // 8) * (size[1] // 8), 24)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ref)
    got = torch.autograd.grad(ours, (images, vit.patch_embed.weight), upstream)
    want = torch.autograd.grad(ref, (images, vit.patch_embed.weight), upstream)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_a_hook_on_the_patch_embedding_sees_the_convolution_called():
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=24, layers=1, heads=2), 16).eval()
    seen = []
    handle = vit.patch_embed.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        vit(torch.randn(2, 3, 32, 32))
    handle.remove()
    assert seen == [torch.Size([2, 24, 4, 4])]
