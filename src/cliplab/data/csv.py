"""CSV/TSV datasets: one row per (image path, caption), open_clip's column conventions.

Relative image paths are resolved against the CSV file's folder. Rows that cannot be used (missing
file, unreadable image, empty or non-UTF-8 caption) come out as :class:`BadSample` naming ``file:row``.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from torch.utils.data import Dataset

from cliplab.data.batch import BadSample
from cliplab.data.samples import Tokenizer, Transform, make_pair, seeded
from cliplab.errors import CliplabError, CliplabWarning

__all__ = ["CsvDataset", "read_rows", "separator"]


def separator(value: str) -> str:
    """A CSV separator as typed on a command line: ``\\t`` (or ``tab``) is a tab; one character in the end."""
    sep = {"\\t": "\t", "tab": "\t"}.get(value, value)
    if len(sep) != 1:
        raise CliplabError(f"csv separator {value!r}: must be one character (use '\\t' for a tab)")
    return sep


def read_rows(
    path: str | os.PathLike[str], columns: list[str], sep: str = ","
) -> tuple[list[list[str]], list[int]]:
    """Read the named columns of a CSV: ``(rows, line numbers)``; one-line errors for a bad file or header.
    A ``.tsv`` file given the default comma is read with tabs (open_clip's default separator)."""
    path = Path(path)
    if sep == "," and path.suffix.lower() == ".tsv":
        sep = "\t"
    # a caption longer than the csv module's default 131,072 characters is one bad row, not a bad file
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    sep = separator(sep)
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:  # -sig: drop a BOM
            # strict: a quote left open is an error, not a caption that swallows the rest of the file
            return _parse(csv.reader(fh, delimiter=sep, strict=True), path, columns)
    except _Malformed as err:
        if sep != "\t":
            raise
        # Tab-separated files seldom quote; a caption that starts with a quote mark (`"Best friends" on a
        # beach`) is text. Read every quote as text then, and say so.
        warnings.warn(f"{err}; reading the file's quote marks as text (tab-separated, so no quoting is "
                      "needed)", CliplabWarning, stacklevel=2)
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            return _parse(csv.reader(fh, delimiter=sep, quoting=csv.QUOTE_NONE), path, columns)
    except OSError as err:
        raise CliplabError(f"{path}: cannot open ({err.strerror})") from None


class _Malformed(CliplabError):
    """The file is not valid CSV under the standard quoting rules."""


def _malformed(path: Path, line: int, err: csv.Error) -> CliplabError:
    hint = " (a quote opened there and never closed?)" if "end of data" in str(err) else ""
    return _Malformed(f"{path}:{line}: malformed CSV ({err}){hint}")


def _parse(reader, path: Path, columns: list[str]) -> tuple[list[list[str]], list[int]]:
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise _malformed(path, 1, err) from None
    if header is None:
        raise CliplabError(f"{path}: empty file (expected a header with columns {columns})")
    missing = [c for c in columns if c not in header]
    if missing:
        hint = " (wrong --csv-separator?)" if len(header) == 1 else ""
        raise CliplabError(f"{path}: missing column(s) {missing}; the header has {header}{hint}")
    idx = [header.index(c) for c in columns]
    rows, lines = [], []
    last_end = reader.line_num  # where the last record ended: the next one starts on the line after
    while True:
        start = last_end + 1  # a quoted caption may span lines: a row is named by its first
        try:
            row = next(reader)
        except StopIteration:
            return rows, lines
        except csv.Error as err:
            raise _malformed(path, start, err) from None
        last_end = reader.line_num
        if row:
            rows.append([row[i] if i < len(row) else "" for i in idx])
            lines.append(start)


class CsvDataset(Dataset):
    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: Transform,
        tokenizer: Tokenizer,
        img_key: str = "filepath",
        caption_key: str = "title",
        sep: str = ",",
    ) -> None:
        self.path = Path(path)
        self.transform, self.tokenizer = transform, tokenizer
        self.rows, self.lines = read_rows(self.path, [img_key, caption_key], sep)
        if not self.rows:
            raise CliplabError(f"{self.path}: no data rows")
        self.root = self.path.parent
        self.seed = 0  # of the augmentation

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple | BadSample:
        """Row ``key``, or ``(row, epoch)``: augmentation drawn from (seed, epoch, row)."""
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        image, caption = self.rows[i]
        source = f"{self.path}:{self.lines[i]}"
        if not image:
            return BadSample(source, "empty image path")
        transform = seeded(self.transform, self.seed, epoch, i)
        return make_pair(self.root / image, caption, source, transform, self.tokenizer)
