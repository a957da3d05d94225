"""``cliplab.classify`` on tiny random models: eval mode for the call, inputs in the model's dtype."""

import pytest
import torch

import cliplab
from cliplab.errors import CliplabError

LABELS = ["a cat", "a dog", "a fox"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return cliplab.create_model("RN-Tiny-64px")  # BatchNorm in its image tower; made in training mode


def test_classify_runs_in_eval_mode_and_restores_the_mode(resnet):
    torch.manual_seed(1)
    images = torch.randn(4, 3, 64, 64)  # (N, 3, S, S), already preprocessed
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    assert resnet.training
    alone = cliplab.classify(images[:1], LABELS, resnet)[0]
    batched = cliplab.classify(images, LABELS, resnet)[0]
    assert resnet.training  # given back as it came
    assert all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())  # running stats untouched
    assert [r["label"] for r in alone] == [r["label"] for r in batched]
    for a, b in zip(alone, batched, strict=True):  # an image's scores do not depend on its batch
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_classify_restores_the_mode_after_an_error(resnet):
    with pytest.raises(CliplabError, match="templates: the list is empty"):  # raised while in eval mode
        cliplab.classify([torch.zeros(3, 64, 64)], LABELS, resnet, templates=[])
    assert resnet.training


def test_classify_restores_each_submodule_mode():
    model = cliplab.create_model("RN-Tiny-64px")
    model.train()
    model.visual.eval()  # e.g. fine-tuning the text tower with the ResNet's BatchNorm statistics frozen
    modes = {name: m.training for name, m in model.named_modules()}
    cliplab.classify(torch.zeros(1, 3, 64, 64), LABELS, model)
    assert {name: m.training for name, m in model.named_modules()} == modes


@pytest.mark.parametrize("images", [[torch.zeros(3, 64, 64), torch.zeros(3, 32, 32)], torch.zeros(2, 3, 32, 32)])
def test_images_of_another_size_are_one_line(resnet, images):
    with pytest.raises(CliplabError, match=r"image (1|0) has shape \(3, 32, 32\); the model takes \(3, 64, 64\)"):
        cliplab.classify(images, LABELS, resnet)


def test_labels_may_be_any_iterable(resnet):
    rows = cliplab.classify(torch.zeros(1, 3, 64, 64), (label for label in LABELS), resnet)
    assert {r["label"] for r in rows[0]} == set(LABELS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_classify_casts_images_to_the_model_dtype(dtype):
    torch.manual_seed(0)
    model = cliplab.create_model("ViT-Tiny-32px").eval()
    images = torch.rand(2, 3, 32, 32)  # float32
    reference = cliplab.classify(images, LABELS, model)
    if dtype == torch.float16 and not _cpu_runs(dtype):
        pytest.skip("no float16 kernels on this CPU")
    cast = cliplab.classify(images, LABELS, model.to(dtype))
    assert len(cast) == 2 and [len(row) for row in cast] == [3, 3]
    assert sum(r["score"] for r in cast[0]) == pytest.approx(1.0, abs=1e-3)
    assert {r["label"] for r in cast[0]} == {r["label"] for r in reference[0]}


def _cpu_runs(dtype: torch.dtype) -> bool:
    try:
        torch.nn.functional.conv2d(torch.ones(1, 1, 2, 2, dtype=dtype), torch.ones(1, 1, 1, 1, dtype=dtype))
    except RuntimeError:
        return False
    return True
