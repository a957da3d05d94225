"""Argument types shared by the subcommands: counts checked by the parser, so a bad value is one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["check_output", "count", "counts"]


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


def check_output(out: str, inputs: Sequence[str] = (), overwrite: bool = False) -> None:
    """Before any work: ``out`` is none of the ``inputs`` and holds none of them (a folder output is replaced
    whole), and replaces nothing unless ``overwrite`` (an empty folder replaces nothing, nor one holding only
    the temporary files of a write a kill cut short)."""
    from cliplab.errors import CliplabError
    from cliplab.fileio import is_debris

    target = Path(out)
    for src in inputs:
        if not (Path(src).exists() and target.exists()):
            continue
        if target.resolve() == Path(src).resolve():
            raise CliplabError(f"{out}: is also the input; write to another path")
        if Path(src).resolve().is_relative_to(target.resolve()):
            raise CliplabError(f"{out}: holds the input {src}, which writing there would replace; write to "
                               "another path")
    if target.exists() and not overwrite and not (target.is_dir() and all(map(is_debris, target.iterdir()))):
        raise CliplabError(f"{out}: already exists; pass --overwrite to replace it, or write to another path")
