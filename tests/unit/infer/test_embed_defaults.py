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
