"""Preprocessing: bit-exact against OpenAI's torchvision pipeline, ≤ 1e-5 against HF where they agree."""

import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from cliplab.config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig
from cliplab.transforms import ImageError, Preprocess, TrainTransform, load_image

SIZES = [(224, 224), (225, 224), (224, 227), (500, 333), (333, 500), (1, 1), (2, 3), (1000, 10), (10, 1000),
         (3000, 2000), (231, 224), (300, 301)]
MODES = ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1"]


def _image(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed + w * 7 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "P":
        return img.convert("RGB").quantize(64)
    return img if mode == "RGBA" else img.convert(mode)


def reference(img, n, mean=OPENAI_MEAN, std=OPENAI_STD):
    """OpenAI's pipeline written from torchvision's documented semantics, as plainly as possible."""
    w, h = img.size
    if w <= h:
        size = (n, int(n * h / w))
    else:
        size = (int(n * w / h), n)
    if size != (w, h):
        img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
    img = img.crop((left, top, left + n, top + n)).convert("RGB")
    x = np.asarray(img).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES)
def test_exact_openai_pipeline(size, mode):
    img = _image(*size, mode=mode)
    out = Preprocess(PreprocessConfig(image_size=224))(img)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.equal(out, reference(img, 224))


def _hf():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_convert_rgb=True,
                   image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))


def _crop_disagrees(w, h, n=224):
    """True where torchvision's round-half-even crop offset differs from HF's floor."""
    short, long = min(w, h), max(w, h)
    long = int(n * long / short)
    return (long - n) % 4 == 3


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("size", SIZES)
def test_matches_hf_where_they_agree(size, mode):
    hf = _hf()
    img = _image(*size, mode=mode)
    ours = Preprocess(PreprocessConfig(image_size=224))(img)
    theirs = torch.from_numpy(np.asarray(hf(images=img, return_tensors="np")["pixel_values"][0]))
    diff = (ours - theirs).abs().max().item()
    if _crop_disagrees(*size):
        assert diff > 1e-3  # the documented one-pixel crop difference
    else:
        assert diff <= 1e-5


def test_hf_differs_on_transparency():
    """HF composites alpha on white before resizing; OpenAI drops it after: documented difference."""
    img = _image(300, 300, "RGBA")
    ours = Preprocess(PreprocessConfig(image_size=224))(img)
    theirs = torch.from_numpy(np.asarray(_hf()(images=img, return_tensors="np")["pixel_values"][0]))
    assert (ours - theirs).abs().max() > 1e-2


def test_load_image_exif_rotation(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_load_image_16bit(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    img = load_image(tmp_path / "deep.png")
    assert img.mode == "L"
    px = np.asarray(img)
    assert px.min() == 0 and px.max() == 255  # scaled, not clipped to white
    assert Preprocess(PreprocessConfig(image_size=32))(img).shape == (3, 32, 32)


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_load_image_errors_name_the_file(tmp_path, data):
    path = tmp_path / "broken.jpg"
    if data is None:  # truncated JPEG
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (0, 128, 0)).save(buf, "JPEG")
        data = buf.getvalue()[:100]
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"broken\.jpg: unreadable image") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_load_image_bomb_limit():
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, "PNG")
    with pytest.raises(ImageError, match=r"<bytes>: 2000x2000 pixels is over the limit"):
        load_image(buf.getvalue(), max_pixels=1_000_000)
    assert load_image(buf.getvalue()).size == (2000, 2000)


def test_train_transform_seeded_and_bounded():
    cfg = PreprocessConfig(image_size=32)
    tt = TrainTransform(cfg, scale=(0.9, 1.0))
    img = _image(64, 48)
    a = tt(img, generator=torch.Generator().manual_seed(1))
    b = tt(img, generator=torch.Generator().manual_seed(1))
    c = tt(img, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = tt.crop_box(64, 48, generator=g)
        assert 0.9 * 64 * 48 * 0.97 <= w * h <= 64 * 48 and 0 <= left <= 64 - w and 0 <= top <= 48 - h
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_picklable():
    for t in (Preprocess(PreprocessConfig()), TrainTransform(PreprocessConfig())):
        assert type(pickle.loads(pickle.dumps(t))) is type(t)


def test_preprocess_applies_exif_and_maps_16bit_itself(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.png", exif=exif)
    pre = Preprocess(PreprocessConfig(image_size=16))
    with Image.open(tmp_path / "r.png") as opened:  # opened by the caller, orientation not applied
        assert torch.equal(pre(opened), pre(load_image(tmp_path / "r.png")))
        assert not torch.equal(pre(opened), reference(opened, 16))  # OpenAI's pipeline ignores the tag
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as deep:
        assert torch.equal(pre(deep), pre(load_image(tmp_path / "deep.png")))
        gen = torch.Generator().manual_seed(0)
        assert TrainTransform(PreprocessConfig(image_size=16))(deep, generator=gen).std() > 0.5  # not all white


def test_thin_strip_is_refused_before_resizing():
    strip = Image.new("RGB", (100_000, 1))
    with pytest.raises(ImageError, match=r"100000x1 image: its short side scaled to 224 .* over the limit"):
        Preprocess(PreprocessConfig(image_size=224))(strip)
    assert Preprocess(PreprocessConfig(image_size=224))(Image.new("RGB", (1000, 10))).shape == (3, 224, 224)


def test_stack_equals_per_image_calls():
    """``stack`` normalises a batch in one pass; each row must be exactly the per-image result, and the
    augmentation must make the same draws in the same order."""
    imgs = [_image(w, h, mode) for (w, h), mode in zip(SIZES[:7], MODES, strict=True)]
    pre = Preprocess(PreprocessConfig(image_size=24))
    assert torch.equal(pre.stack(imgs), torch.stack([pre(img) for img in imgs]))
    aug = TrainTransform(PreprocessConfig(image_size=24))
    one = torch.stack([aug(img, generator=torch.Generator().manual_seed(3)) for img in imgs[:1]])
    g = torch.Generator().manual_seed(3)
    per_image = torch.stack([aug(img, generator=g) for img in imgs])
    batched = aug.stack(imgs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(batched, per_image) and torch.equal(batched[:1], one)
    assert batched.shape == (7, 3, 24, 24) and batched.is_contiguous()


def test_arrays_of_every_channel_count_and_empty_images():
    from cliplab.errors import CliplabError
    from cliplab.transforms import as_pixels

    pre = Preprocess(PreprocessConfig(image_size=8))
    gray = np.random.default_rng(0).integers(0, 256, (5, 6), dtype=np.uint8)
    assert torch.equal(as_pixels(gray[:, :, None], pre), as_pixels(gray, pre))  # (H, W, 1) is grayscale
    assert as_pixels(np.zeros((5, 6, 4), np.uint8), pre).shape == (3, 8, 8)
    with pytest.raises(CliplabError, match=r"^image 2 is a uint8 array of shape \(5, 6, 5\); give .* C = 1, 3"):
        as_pixels(np.zeros((5, 6, 5), np.uint8), pre, "image 2")
    with pytest.raises(CliplabError, match=r"^image 3: an empty 6x0 image$"):
        as_pixels(np.zeros((0, 6, 3), np.uint8), pre, "image 3")
    with pytest.raises(CliplabError, match="an empty 0x4 image"):
        pre(Image.new("RGB", (0, 4)))


def test_float_images_keep_their_levels_as_openai_does():
    """OpenAI's pipeline resizes an F image as floats and clips it to 0-255 in convert("RGB"); a per-image
    min/max stretch made a constant white image black and stretched 100..150 to 0..255."""
    rng = np.random.default_rng(0)
    for arr in (np.full((30, 40), 255.0), rng.uniform(100, 150, (30, 40)), rng.uniform(-50, 300, (41, 29))):
        img = Image.fromarray(arr.astype(np.float32), "F")
        assert torch.equal(Preprocess(PreprocessConfig(image_size=16))(img), reference(img, 16))
    with_nan = np.full((20, 20), 200.0, np.float32)
    with_nan[3, 4] = np.nan  # taken as 0
    zeroed = with_nan.copy()
    zeroed[3, 4] = 0.0
    assert torch.equal(Preprocess(PreprocessConfig(image_size=16))(Image.fromarray(with_nan, "F")),
                       reference(Image.fromarray(zeroed, "F"), 16))


def test_load_image_limit_can_only_be_lowered_and_pillow_does_not_warn_below_it():
    from cliplab.errors import CliplabError
    from cliplab.transforms import MAX_PIXELS

    with pytest.raises(CliplabError, match="over Pillow's own limit"):
        load_image(b"", max_pixels=MAX_PIXELS + 1)
    buf = io.BytesIO()
    Image.new("1", (9600, 9600)).save(buf, "PNG")  # 92 Mpx: over Pillow's warning threshold, under its limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(buf.getvalue()).size == (9600, 9600)


def test_as_pixels_refuses_integer_tensors():
    from cliplab.errors import CliplabError
    from cliplab.transforms import as_pixels

    with pytest.raises(CliplabError, match=r"image 3 is a torch\.uint8 tensor"):
        as_pixels(torch.zeros(3, 8, 8, dtype=torch.uint8), None, "image 3")
