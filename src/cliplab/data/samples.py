"""Turning raw (image bytes or path, caption) into a training pair, or a :class:`BadSample` saying why not."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import IO, Any

import torch

from cliplab.data.batch import BadSample
from cliplab.errors import CliplabError

__all__ = ["decode_caption", "make_pair", "seeded"]

Transform = Callable[[Any], torch.Tensor]
Tokenizer = Callable[..., torch.Tensor]


def decode_caption(raw: bytes | str, source: str) -> str | BadSample:
    """A non-empty UTF-8 caption, or the reason it is unusable."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return BadSample(source, "caption is not valid UTF-8")
    else:
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # surrogates from a file read with errors="surrogateescape"
            return BadSample(source, "caption is not valid UTF-8")
    text = raw.strip()
    if not text:
        return BadSample(source, "empty caption")
    return text


def seeded(transform: Transform, seed: int, epoch: int, index: int) -> Transform:
    """``transform`` with its random draws (if it makes any) taken from a generator of ``(seed, epoch,
    index)``: the same augmentation for any number of workers or ranks, and after a resume."""
    if not getattr(transform, "random", False):
        return transform
    key = ((seed * 1_000_003 + epoch) * 2**32 + index) % 2**63
    return functools.partial(transform, generator=torch.Generator().manual_seed(key))


def make_pair(
    image: str | bytes | IO[bytes],
    caption: bytes | str,
    source: str,
    transform: Transform,
    tokenizer: Tokenizer,
) -> tuple[torch.Tensor, torch.Tensor] | BadSample:
    """Load + transform the image and tokenise the caption (truncating long captions)."""
    from cliplab.transforms import load_image

    text = decode_caption(caption, source)
    if isinstance(text, BadSample):
        return text
    try:
        pixels = transform(load_image(image))  # (3, S, S)
    except FileNotFoundError:
        return BadSample(source, "image file not found")
    except (CliplabError, OSError, ValueError) as err:
        return BadSample(source, f"unreadable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    tokens = tokenizer([text], truncate=True)[0]  # (L,)
    return pixels, tokens
