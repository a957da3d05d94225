"""OpenAI's caption cleaning (ftfy, HTML unescape twice, whitespace collapse, lower-case), fast and exact.

Most captions are printable ASCII without '&', where all of it reduces to lower-casing. For the rest,
:func:`fix_text` gives exactly ``ftfy.fix_text`` (default settings) while skipping its costly parts where
they provably do nothing: the mojibake repair only runs when ftfy's own badness pattern matches, and that
pattern is tried only next to the characters it names. Equivalence is tested on large random corpora.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

__all__ = ["clean_text", "fix_text", "is_plain", "plain_mask"]

_WS = re.compile(r"\s+")
# Printable ASCII without '&' (plus tab and line breaks) needs no ftfy and no HTML unescaping.
_PLAIN_BYTES = bytes(range(0x20, 0x7F)).replace(b"&", b"") + b"\t\n\r"
_NOT_PLAIN = np.ones(128, dtype=bool)
_NOT_PLAIN[np.frombuffer(_PLAIN_BYTES, np.uint8)] = False


def is_plain(text: str) -> bool:
    """True for text made only of printable ASCII (no '&'), tabs and line breaks: cleaning is lower-casing."""
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN_BYTES)


def plain_mask(texts: Sequence[str]) -> list[bool]:
    """:func:`is_plain` of every text, in one vectorised pass over their code points."""
    lens = np.fromiter(map(len, texts), np.int64, count=len(texts))
    codes = np.frombuffer("\n".join(texts).encode("utf-32-le", "surrogatepass"), np.uint32)  # (sum(lens) + N - 1,)
    bad = np.flatnonzero((codes >= 128) | _NOT_PLAIN[codes & 127])  # positions of non-plain characters
    ends = np.cumsum(lens + 1)  # (N,) one past each text's separator
    mask = np.ones(len(texts), dtype=bool)
    mask[np.searchsorted(ends, bad, side="right")] = False
    return mask.tolist()


def _char_class(codepoints: set[int]) -> str:
    ranges, run = [], [min(codepoints), min(codepoints)]
    for cp in sorted(codepoints)[1:]:
        if cp == run[1] + 1:
            run[1] = cp
        else:
            ranges.append(run)
            run = [cp, cp]
    ranges.append(run)
    return "[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]"


class _Ftfy:
    """ftfy's ``fix_text`` with its default settings, minus the work that cannot change the text."""

    def __init__(self) -> None:
        import ftfy
        from ftfy import badness, chardata, fixes

        self.ftfy = ftfy
        # every character one of fix_text's fixers maps; '\n' because fix_text works line by line
        cps = set(chardata.LIGATURES) | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS)
        cps |= {*range(0x80, 0xA0), 0x02BC, *range(0x2018, 0x2020), 0x2028, 0x2029, *range(0xD800, 0xE000)}
        cps |= {ord(c) for c in "&\n\r\x1b"}
        self.touched = re.compile(_char_class(cps))
        # every alternative of ftfy's mojibake pattern needs one of its category characters or non-ASCII literals
        literals = sorted({c for c in badness.BADNESS_RE.pattern if not c.isascii()})
        self.suspect = re.compile("[" + "".join(badness.MOJIBAKE_CATEGORIES.values()) + "".join(literals) + "]")
        self.bad = badness.BADNESS_RE
        # fix_and_explain's fixers after the encoding repair, in its order
        self.fixers = (fixes.fix_c1_controls, fixes.fix_latin_ligatures, fixes.fix_character_width,
                       fixes.uncurl_quotes, fixes.fix_line_breaks, fixes.fix_surrogates,
                       fixes.remove_terminal_escapes, fixes.remove_control_chars)
        self.unescape = fixes.unescape_html

    def looks_bad(self, text: str) -> bool:
        """``badness.is_bad(text)``, trying the pattern only where a match can start: at most two characters
        before one of its characters (``[a-z]\\s?[ÃÂ]`` is the longest lead-in; 4 leaves a margin)."""
        start = 0
        for m in self.suspect.finditer(text):
            for pos in range(max(start, m.start() - 4), m.start() + 1):
                if self.bad.match(text, pos):
                    return True
            start = m.start() + 1
        return False

    def is_noop(self, text: str) -> bool:
        """True only if ``ftfy.fix_text(text) == text`` (False: the fix may change it)."""
        return (len(text) < 100_000 and self.touched.search(text) is None
                and unicodedata.is_normalized("NFC", text) and not self.looks_bad(text))

    def fix(self, text: str) -> str:
        """Exactly ``ftfy.fix_text(text)``."""
        if self.is_noop(text):
            return text
        if "\n" in text or len(text) >= 100_000:  # several segments: let ftfy split them
            return self.ftfy.fix_text(text)
        original, unescape = text, "<" not in text  # fix_text's unescape_html="auto"
        while True:  # fix_and_explain's loop, with fix_encoding where it is a no-op (nothing looks bad)
            before = text
            if unescape:
                text = self.unescape(text)
            if self.looks_bad(text):
                return self.ftfy.fix_text(original)  # mojibake to repair: the real thing
            for fixer in self.fixers:
                text = fixer(text)
            text = unicodedata.normalize("NFC", text)
            if text == before:
                return text


@functools.lru_cache(maxsize=1)
def _ftfy() -> _Ftfy:
    return _Ftfy()


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` (default settings), faster where ftfy's slow steps cannot apply."""
    return _ftfy().fix(text)


@functools.lru_cache(maxsize=65536)
def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
    if not is_plain(text):
        text = fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip().lower()
