"""embed_images / embed_texts / classify default to the preprocessing and tokenizer of the model's checkpoint."""

import dataclasses

import numpy as np
import torch
from PIL import Image

import cliplab
from cliplab.checkpoint import save_checkpoint
from cliplab.config import CLIPConfig, PreprocessConfig, load_arch
from cliplab.infer.embed import embed_images, embed_texts
from cliplab.model.build import create_model
from cliplab.transforms import Preprocess


def test_defaults_are_the_checkpoints_own(tmp_path):
    arch = load_arch("ViT-Tiny-32px")
    own = PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
    cfg = dataclasses.replace(CLIPConfig.for_model(arch), preprocess=own)
    torch.manual_seed(0)
    save_checkpoint(create_model(arch), cfg, tmp_path / "ckpt")
    model, preprocess, tokenizer = cliplab.load(tmp_path / "ckpt")
    images = [Image.new("RGB", (50, 40), (200, 30 * i, 90)) for i in range(3)]
    got = embed_images(images, model)  # (N, D)
    np.testing.assert_array_equal(got, embed_images(images, model, preprocess))
    openai = embed_images(images, model, Preprocess(PreprocessConfig(image_size=32)))
    assert np.abs(got - openai).max() > 1e-3  # the statistics matter, so the default is not OpenAI's
    texts = ["a red square", "two blue circles"]
    np.testing.assert_array_equal(embed_texts(texts, model), embed_texts(texts, model, tokenizer))
    assert cliplab.classify(images, ["red", "blue"], model) == cliplab.classify(images, ["red", "blue"], model,
                                                                                 preprocess, tokenizer)


def test_classify_inputs_and_one_line_mistakes(tmp_path):
    import pytest

    from cliplab.errors import CliplabError

    torch.manual_seed(0)
    model = cliplab.create_model("ViT-Tiny-32px").eval()
    image = Image.new("RGB", (40, 30), (200, 40, 40))
    image.save(tmp_path / "a.png")
    ref = cliplab.classify([image], ["red", "blue"], model)
    preprocess = cliplab.api.model_io(model)[0]
    batch = torch.stack([preprocess(image)] * 2)  # (2, 3, 32, 32)

    def same(got, want):  # labels in the same order, scores to float precision (batch sizes differ)
        return [[p["label"] for p in row] for row in got] == [[p["label"] for p in row] for row in want] and all(
            abs(p["score"] - q["score"]) < 1e-5 for a, b in zip(got, want, strict=True)
            for p, q in zip(a, b, strict=True))

    assert same(cliplab.classify(batch, ["red", "blue"], model), ref * 2)  # one (N, 3, S, S) tensor
    assert same(cliplab.classify([str(tmp_path / "a.png")], ["red", "blue"], model), ref)  # a file path
    assert same(cliplab.classify([np.asarray(image)], ["red", "blue"], model), ref)  # a uint8 array
    for one in (image, str(tmp_path / "a.png"), tmp_path / "a.png", np.asarray(image), preprocess(image)):
        assert same(cliplab.classify(one, ["red", "blue"], model), ref), type(one)  # one image: one row
    with pytest.raises(CliplabError, match="label 'red' is given more than once"):
        cliplab.classify(image, ["red", "blue", "red"], model)
    with pytest.raises(CliplabError, match=r"a tensor of images must have 3 or 4 dimensions, got shape \(32, 32\)"):
        cliplab.classify(torch.zeros(32, 32), ["red", "blue"], model)
    with pytest.raises(CliplabError, match="image 0 is a dict"):
        cliplab.classify([{}], ["red", "blue"], model)
    with pytest.raises(CliplabError, match=r"a template needs a \{\}"):
        cliplab.classify([image], ["red", "blue"], model, templates="a photo")
    with pytest.raises(CliplabError, match=r"expected images of shape \(N, 3, 32, 32\)"):
        model.encode_image(torch.zeros(1, 3, 64, 64))
    assert model.encode_text(torch.zeros(0, 32, dtype=torch.long)).shape == (0, model.cfg.embed_dim)
