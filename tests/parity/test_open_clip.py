"""Opt-in reference tier: cliplab vs open_clip on shared random weights (run with `make parity`)."""

import pytest
import torch

from cliplab.convert.openai import from_openai, infer_config
from cliplab.model.build import create_model

pytestmark = pytest.mark.parity


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
@torch.no_grad()
def test_matches_open_clip(name):
    open_clip = pytest.importorskip("open_clip")  # only in the reference environment (make parity-env)
    torch.manual_seed(0)
    ref = open_clip.create_model(name, pretrained=None).eval()
    sd = ref.state_dict()
    cfg = infer_config(sd, activation="gelu")  # open_clip's non-OpenAI configs use nn.GELU
    ours = create_model(cfg).eval()
    ours.load_state_dict(from_openai(sd))
    images = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat", "a diagram of something long and odd"])
    assert _rel(ours.encode_image(images), ref.encode_image(images)) <= 1e-5
    assert _rel(ours.encode_text(tokens), ref.encode_text(tokens)) <= 1e-5
