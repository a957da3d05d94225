"""The fast cleaning path is exactly ftfy + OpenAI's cleaning, on random, mojibake and HTML-laden text."""

import random

import ftfy
import pytest
from ftfy.badness import is_bad

from cliplab.text_clean import _ftfy, fix_text, is_plain, plain_mask
from tests.unit.test_tokenizer import CORPUS, _fuzz_text


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(2)
    out = [_fuzz_text(rng) for _ in range(20000)] + CORPUS
    out += ["".join(chr(rng.randrange(0x80, 0x2100)) for _ in range(8)) for _ in range(5000)]
    for enc in ("latin-1", "cp1252", "mac_roman", "cp1251", "cp1253", "cp1257"):  # mojibake of every kind
        out += [t.encode("utf-8", "surrogatepass").decode(enc, errors="replace") for t in out[20000:21000]]
    entities = ["&amp;", "&amp;amp;lt;", "&lt;b&gt;", "&#x2019;", "&eacute;", "&Atilde;&copy;", "AT&T", "&#0;"]
    out += [f"{rng.choice(entities)} {t} “{rng.choice(entities)}”" for t in out[:3000]]
    return out


def test_fix_text_is_ftfy(texts):
    assert [t for t in texts if fix_text(t) != ftfy.fix_text(t)] == []


def test_noop_test_is_exact_and_used(texts):
    fast = _ftfy()
    taken = [t for t in texts if fast.is_noop(t)]
    assert len(taken) > 5000  # the shortcut is really used
    assert [t for t in taken if ftfy.fix_text(t) != t] == []
    assert [t for t in texts if fast.looks_bad(t) != is_bad(t)] == []  # the windowed search is ftfy's
    assert sum(map(is_bad, texts)) > 1000


def test_plain_mask(texts):
    sample = texts[:3000] + ["plain text", "with & amp", "tab\there", "bell\x07"]
    assert plain_mask(sample) == [is_plain(t) for t in sample]
    assert [is_plain(t) for t in ("a b.", "a&b", "a\x00", "é", "x\ty\r\n")] == [True, False, False, False, True]
