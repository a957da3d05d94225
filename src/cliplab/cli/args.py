"""Argument types shared by the subcommands: counts checked by the parser, so a bad value is one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["count", "counts"]


def count(minimum: int) -> Callable[[str], int]:
    """An integer of at least ``minimum`` (``type=count(1)`` for a batch size, ``count(0)`` for workers)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def counts(text: str) -> list[int]:
    """``1,2,4``: positive integers separated by commas."""
    return [count(1)(part) for part in text.split(",") if part.strip()]
