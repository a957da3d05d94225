"""Image loading and preprocessing with Pillow and torch only (no torchvision).

:class:`Preprocess` reproduces OpenAI's evaluation pipeline bit for bit — torchvision's
``Resize(n, BICUBIC)`` (short side to ``n``, long side ``int(n * long / short)``, no-op when already that
size), ``CenterCrop(n)`` (offset ``int(round((h - n) / 2))``), ``convert("RGB")``, ``ToTensor`` and
``Normalize`` — in that order, so an RGBA or palette image is resized in its own mode first, as OpenAI's
code does.

Where ``transformers.CLIPImageProcessor`` differs (measured in ``tests/unit/test_transforms.py``):

* its centre crop floors the offset, ``(h - n) // 2``, where torchvision rounds half to even: when
  ``h - n ≡ 3 (mod 4)`` the two crops are one pixel apart;
* it converts to RGB *before* resizing (and composites transparency on white), so images in any mode
  other than RGB and L differ after normalisation, measured (max abs): CMYK ~0.015, YCbCr ~0.05, palette
  (P) 0.7–0.8 and bilevel (1) ~3, since Pillow resizes those two with NEAREST in their own mode, and
  RGBA up to ~3.8 where transparent pixels hold colour;
* elsewhere the two agree to ≤ 1e-5 (float rounding of its numpy rescale/normalise).

:func:`load_image` opens a file or bytes, applies the EXIF orientation, maps 16/32-bit integer images to
8-bit grey (Pillow's own conversion would clip them: ``I;16`` on a 0–65535 scale, ``I`` on 0–65535 when
any value exceeds 255, else 0–255), keeps float (``F``) images on Pillow's 0–255 scale as OpenAI's
pipeline does (NaN as 0), and enforces a decompression-bomb limit. The
transforms do the first two themselves for an image the caller opened (OpenAI's pipeline does neither, so
a rotated phone photo or a 16-bit scan is where the two differ), and refuse a strip so thin that scaling its
short side up would exceed the same pixel limit.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cliplab.config import PreprocessConfig
from cliplab.errors import CliplabError

__all__ = ["ImageError", "Preprocess", "TrainTransform", "as_pixels", "image_transform", "load_image",
           "to_tensor", "to_tensors"]

MAX_PIXELS = 178_956_970  # Pillow's own default bomb limit
ORIENTATION = 0x0112  # the EXIF tag
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


class ImageError(CliplabError):
    """An image that cannot be used: unreadable, corrupt, truncated or too large. Names the file."""


def _name(src: object) -> str:
    if isinstance(src, str | os.PathLike):
        return str(src)
    return getattr(src, "name", "<bytes>") if not isinstance(src, bytes | bytearray) else "<bytes>"


def load_image(src: str | os.PathLike[str] | bytes | IO[bytes], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image fully, EXIF-rotated, in a mode :class:`Preprocess` accepts; one-line errors."""
    if max_pixels > MAX_PIXELS:
        raise CliplabError(f"load_image: max_pixels={max_pixels} is over Pillow's own limit of {MAX_PIXELS}; "
                           "it can only be lowered")
    name = _name(src)
    fh = io.BytesIO(src) if isinstance(src, bytes | bytearray) else src
    try:
        with _quiet_bomb_warning(), Image.open(fh) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}x{h} pixels is over the limit of {max_pixels}")
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_8bit(img)
    except FileNotFoundError:
        raise
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, UnidentifiedImageError):
            reason = "not an image (or an unsupported format)"
        raise ImageError(f"{name}: unreadable image ({reason})") from None


@contextlib.contextmanager
def _quiet_bomb_warning() -> Iterator[None]:
    """Pillow warns from half its limit on; here the limit is the caller's ``max_pixels``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _to_8bit(img: Image.Image) -> Image.Image:
    if img.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La", "RGBa"):
        return img
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr.astype(np.float64) / hi * 255.0 + 0.5, 0, 255)
    elif img.mode == "F":  # resized as floats, then clipped to 0-255 by convert("RGB"), as OpenAI's pipeline
        return img if not np.isnan(arr).any() else Image.fromarray(np.nan_to_num(arr, nan=0.0), mode="F")
    else:
        return img.convert("RGB")
    return Image.fromarray(arr.astype(np.uint8), mode="L")


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image → normalised float tensor (3, H, W), with torchvision's exact arithmetic."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))  # (H, W, 3)
    x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # (3, H, W)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def to_tensors(imgs: list[Image.Image], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Same-size RGB PIL images → (B, 3, H, W), each row exactly :func:`to_tensor` of its image, in one pass."""
    x = torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for img in imgs]))  # (B, H, W, 3)
    x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)  # (B, 3, H, W)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def _resize_short(img: Image.Image, n: int, resample: int) -> Image.Image:
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == 0:
        raise ImageError(f"an empty {w}x{h} image")
    new_long = int(n * long / short)
    size = (n, new_long) if w <= h else (new_long, n)  # (w, h)
    if n * new_long > MAX_PIXELS:  # a thin strip: scaling its short side up would take gigabytes
        raise ImageError(f"a {w}x{h} image: its short side scaled to {n} makes it {size[0]}x{size[1]} pixels, "
                         f"over the limit of {MAX_PIXELS}")
    return img if size == (w, h) else img.resize(size, resample)


def _center_crop(img: Image.Image, n: int) -> Image.Image:
    w, h = img.size  # both >= n after _resize_short
    top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
    return img.crop((left, top, left + n, top + n))


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _upright(img: Image.Image) -> Image.Image:
    """The EXIF orientation applied and 16/32-bit integer pixels mapped to 8-bit, as :func:`load_image`
    does, for a PIL image the caller opened; a no-op for images without either (OpenAI's pipeline ignores
    both, so it is bit-identical there). EXIF that cannot be parsed counts as no rotation: the pixels are fine."""
    try:
        if img.getexif().get(ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img) or img
    except (SyntaxError, ValueError, OSError, TypeError, KeyError, IndexError):
        pass  # malformed EXIF ("not a TIFF file"): keep the image as stored
    return _to_8bit(img)


class Preprocess:
    """Evaluation preprocessing: PIL image (any mode) → float tensor (3, S, S)."""

    random = False  # deterministic: takes no generator

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.resample = _RESAMPLE[cfg.interpolation]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_tensor(self._fit(img), self.cfg.mean, self.cfg.std)

    def stack(self, imgs: list[Image.Image]) -> torch.Tensor:
        """``torch.stack([self(img) for img in imgs])``, normalised in one pass: (B, 3, S, S)."""
        return to_tensors([self._fit(img) for img in imgs], self.cfg.mean, self.cfg.std)

    def _fit(self, img: Image.Image) -> Image.Image:
        n = self.cfg.image_size
        img = _upright(img)
        if self.cfg.resize_mode == "squash":
            img = img.resize((n, n), self.resample)
        else:
            img = _center_crop(_resize_short(img, n, self.resample), n)
        return _rgb(img)

    def __repr__(self) -> str:
        return f"Preprocess({self.cfg})"


class TrainTransform:
    """Training augmentation: random resized crop (area ``scale``, aspect ``ratio``) then normalisation."""

    random = True  # __call__ takes a generator, for reproducible (resumable) augmentation

    def __init__(self, cfg: PreprocessConfig, scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.cfg, self.scale, self.ratio = cfg, scale, ratio
        self.resample = _RESAMPLE[cfg.interpolation]

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(left, top, w, h) of the crop, drawn as torchvision's RandomResizedCrop draws it."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale, generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return left, top, w, h
        in_ratio = width / height  # fallback: the central crop with the closest allowed aspect
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return to_tensor(self._crop(img, generator), self.cfg.mean, self.cfg.std)

    def stack(self, imgs: list[Image.Image], generator: torch.Generator | None = None) -> torch.Tensor:
        """``torch.stack([self(img, generator) for img in imgs])`` (the same draws, in the same order),
        normalised in one pass: (B, 3, S, S)."""
        return to_tensors([self._crop(img, generator) for img in imgs], self.cfg.mean, self.cfg.std)

    def _crop(self, img: Image.Image, generator: torch.Generator | None) -> Image.Image:
        img = _rgb(_upright(img))  # augmentation resamples in RGB (better than resampling palette indices)
        left, top, w, h = self.crop_box(*img.size, generator=generator)
        n = self.cfg.image_size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return img.resize((n, n), self.resample, box=(left, top, left + w, top + h))


def image_transform(cfg: PreprocessConfig, train: bool = False) -> Preprocess | TrainTransform:
    return TrainTransform(cfg) if train else Preprocess(cfg)


def as_pixels(image: Any, preprocess: Any, where: str = "image") -> torch.Tensor:
    """One model input as a preprocessed tensor (3, S, S): a tensor as it is, a PIL image, a file path, or an
    (H, W[, C]) uint8 array; ``where`` names the input in the error for anything else."""
    if torch.is_tensor(image):
        if not image.is_floating_point():
            raise CliplabError(f"{where} is a {image.dtype} tensor; a preprocessed image is a float (3, S, S) "
                               "tensor (give raw pixels as a PIL image or a uint8 array)")
        return image
    if isinstance(image, str | os.PathLike):
        image = load_image(image)
    elif isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]  # (H, W): grayscale
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise CliplabError(f"{where} is a {image.dtype} array of shape {image.shape}; give (H, W) or "
                               "(H, W, C) uint8 with C = 1, 3 (RGB) or 4 (RGBA)")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise CliplabError(f"{where} is a {type(image).__name__}; give PIL images, file paths, uint8 arrays or "
                           "preprocessed tensors")
    try:
        return preprocess(image)
    except ImageError as err:
        raise ImageError(f"{where}: {err}") from None
