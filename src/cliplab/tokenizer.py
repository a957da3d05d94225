"""OpenAI-compatible byte-level BPE tokenizer, fast through the ``tokenizers`` library.

Same ids as OpenAI's ``simple_tokenizer``: ftfy fix, double HTML unescape, whitespace collapse,
lower-case; OpenAI's regex pre-tokenisation; bytes mapped to printable characters; BPE with an ``</w>``
end-of-word suffix; ``<start_of_text>`` 49406 and ``<end_of_text>`` 49407; zero padding to the context.
The cleaning and pre-tokenisation run in Python (ftfy skipped where it provably changes nothing); each
distinct word goes through the Rust BPE once and is cached.

:func:`train_bpe` learns a small vocabulary with the same cleaning and pre-tokenisation, for models
trained from scratch on a narrow caption corpus.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import regex
import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _RustTokenizer

from cliplab.config import TokenizerConfig
from cliplab.errors import CliplabError
from cliplab.fileio import write_text

__all__ = ["Tokenizer", "TokenizerError", "clean_text", "get_tokenizer", "train_bpe"]

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# OpenAI's pre-tokenisation pattern (without its special-token alternatives, which are added tokens here).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_WS = re.compile(r"\s+")
# ASCII text with none of these needs no ftfy: no HTML entity to unescape, no control character to drop.
_FTFY_NEEDED = re.compile(r"[^\t\n\r\x20-\x7e]|&")
_SPECIAL = r"<\|startoftext\|>|<\|endoftext\|>|"
_WORDS = regex.compile(_SPECIAL + PATTERN, regex.IGNORECASE)
# the same pattern for lower-cased printable ASCII: \p{L} is [a-z] there and \p{N} is [0-9]
_ASCII_WORDS = re.compile(_SPECIAL + r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+""")


class TokenizerError(CliplabError):
    """Text that cannot be tokenised as asked (too long, empty batch)."""


@functools.lru_cache(maxsize=65536)
def clean_text(text: str) -> str:
    """OpenAI's cleaning: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
    if _FTFY_NEEDED.search(text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WS.sub(" ", text).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI/GPT-2's reversible map from bytes to printable characters (the BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _openai_backend() -> _RustTokenizer:
    path = resources.files("cliplab") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    with resources.as_file(path) as p, gzip.open(p, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    backend = _RustTokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=None))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    return backend


class Tokenizer:
    """``tokenizer(texts) -> LongTensor (N, context_length)``; see the module docstring.

    Words are pre-tokenised with OpenAI's pattern (a plain-ASCII twin of it for the texts that need no
    ftfy), and each distinct word is run through the BPE once and cached: captions reuse few words.
    """

    def __init__(self, backend: _RustTokenizer, context_length: int = 77) -> None:
        self.backend = backend
        self.context_length = context_length
        self.sot_token_id = backend.token_to_id(SOT)
        self.eot_token_id = backend.token_to_id(EOT)
        if self.sot_token_id is None or self.eot_token_id is None:
            raise TokenizerError(f"tokenizer vocabulary lacks {SOT} or {EOT}")
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self._words: dict[str, list[int]] = {SOT: [self.sot_token_id], EOT: [self.eot_token_id]}

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def _word_ids(self, word: str) -> list[int]:
        ids = self._words.get(word)
        if ids is None:
            ids = self.backend.encode(word, add_special_tokens=False).ids
            if len(self._words) < 1_000_000:
                self._words[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        if _FTFY_NEEDED.search(text) is None:  # printable ASCII without '&': cleaning is collapse + lower
            words = _ASCII_WORDS.findall(" ".join(text.split()).lower())
        else:
            words = _WORDS.findall(clean_text(text))
        word_ids = self._word_ids
        return [i for w in words for i in word_ids(w)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; start, end and padding tokens are skipped."""
        skip = {0, self.sot_token_id, self.eot_token_id}
        pieces = [self.backend.id_to_token(int(i)) for i in ids if int(i) not in skip]
        text = "".join(p for p in pieces if p is not None).replace("</w>", " ")
        raw = bytearray(self._byte_decoder.get(c, ord(" ")) if c != " " else 32 for c in text)
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = False
    ) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise TokenizerError("nothing to tokenize: the list of texts is empty")
        n_ctx = context_length or self.context_length
        out = np.zeros((len(texts), n_ctx), dtype=np.int64)  # (N, L), zero padding
        sot, eot = self.sot_token_id, self.eot_token_id
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) + 2 > n_ctx:
                if not truncate:
                    short = text if len(text) <= 60 else text[:57] + "..."
                    raise TokenizerError(
                        f"text {short!r} has {len(ids) + 2} tokens, more than the context length {n_ctx} "
                        "(pass truncate=True to cut it)"
                    )
                ids = ids[: n_ctx - 2]
            out[row, 0] = sot
            out[row, 1 : len(ids) + 1] = ids
            out[row, len(ids) + 1] = eot
        return torch.from_numpy(out)


@functools.lru_cache(maxsize=1)
def _openai_tokenizer_backend() -> _RustTokenizer:
    return _openai_backend()


def get_tokenizer(cfg: TokenizerConfig | None = None, root: str | os.PathLike[str] | None = None) -> Tokenizer:
    """The tokenizer a model expects: OpenAI's BPE by default, or a learned one stored beside a checkpoint."""
    cfg = cfg or TokenizerConfig()
    if cfg.kind == "openai":
        return Tokenizer(_openai_tokenizer_backend(), cfg.context_length)
    if not cfg.vocab:
        raise TokenizerError("tokenizer.kind is 'bpe' but tokenizer.vocab names no file")
    path = Path(root or ".") / cfg.vocab
    try:
        backend = _RustTokenizer.from_file(str(path))
    except Exception as err:  # the Rust library raises plain Exceptions
        raise TokenizerError(f"{path}: cannot read tokenizer ({str(err).splitlines()[0]})") from None
    return Tokenizer(backend, cfg.context_length)


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    output: str | os.PathLike[str] | None = None,
    context_length: int = 77,
) -> Tokenizer:
    """Learn a byte-level BPE vocabulary on captions (same cleaning and pre-tokenisation as OpenAI's).

    Id 0 stays the padding id: the byte alphabet comes first, and the start/end tokens are the last two
    ids. With ``output`` the tokenizer is saved (atomically) as one JSON file for :func:`get_tokenizer`.
    """
    if vocab_size < 256 + 2:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: the byte alphabet alone needs 256 + 2")
    backend = _RustTokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=None))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        initial_alphabet=sorted(_bytes_to_unicode().values()),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator((clean_text(t) for t in texts), trainer=trainer)
    backend.add_special_tokens([SOT, EOT])
    tok = Tokenizer(backend, context_length)
    if output is not None:
        write_text(output, backend.to_str())
    return tok
