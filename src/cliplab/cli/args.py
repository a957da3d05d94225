"""Argument types shared by the subcommands: counts checked by the parser, so a bad value is one line."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["check_output", "count", "counts", "staged_output"]


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


@contextlib.contextmanager
def staged_output(out: str) -> Iterator[str]:
    """Where a command writes a model: a folder is written whole beside ``out`` and swapped in at the end, so
    a kill or an error leaves the old output or the new one, never new weights beside an old config or the
    files of an earlier export. A ``.safetensors`` file is written atomically by its writer. A training
    run's folder is refused, even with ``--overwrite``."""
    from cliplab.checkpoint import check_model_output
    from cliplab.fileio import atomic_dir

    path = Path(out)
    if path.suffix == ".safetensors" or (path.exists() and not path.is_dir()):
        yield out  # a single file (or a path its writer refuses with its own message)
        return
    check_model_output(path)
    with atomic_dir(path) as work:
        yield str(work)
