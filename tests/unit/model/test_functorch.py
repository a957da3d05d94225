"""torch.func transforms over the towers: the plain path runs for wrapped tensors (vmap has no batching rule for
the CPU inference path's ``out=`` GEMMs)."""

import warnings

import torch

from cliplab.api import create_model


def test_vmap_of_the_image_tower_under_no_grad_equals_the_batched_call():
    torch.manual_seed(0)
    m = create_model("ViT-Tiny-32px").eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v_img = torch.vmap(lambda im: m.encode_image(im[None])[0])(images)
        torch.testing.assert_close(v_img, m.encode_image(images), rtol=1e-5, atol=1e-5)
    # vmap has no batching rule for in-place activations either (it falls back, with a warning, per call)
    assert not [w for w in caught if "gelu_" in str(w.message) or "silu_" in str(w.message)]
