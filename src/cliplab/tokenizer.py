"""OpenAI-compatible byte-level BPE tokenizer, fast through the ``tokenizers`` library.

Same ids as OpenAI's ``simple_tokenizer``: ftfy fix, double HTML unescape, whitespace collapse,
lower-case; OpenAI's regex pre-tokenisation; bytes mapped to printable characters; BPE with an ``</w>``
end-of-word suffix; ``<start_of_text>`` 49406 and ``<end_of_text>`` 49407; zero padding to the context.
The cleaning and pre-tokenisation run in Python (ftfy skipped where it provably changes nothing); each
distinct whitespace-separated chunk is pre-tokenised and BPE-encoded (in Rust) once and cached, so a
batch costs a join, a split and a few numpy gathers.

:func:`train_bpe` learns a small vocabulary with the same cleaning and pre-tokenisation, for models
trained from scratch on a narrow caption corpus.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import threading
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
from cliplab.text_clean import clean_text, is_plain, plain_mask

__all__ = ["Tokenizer", "TokenizerError", "clean_text", "get_tokenizer", "openai_vocab", "train_bpe"]

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# OpenAI's pre-tokenisation pattern (without its special-token alternatives, which are added tokens here).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SEP = "\x00"  # the chunk that ends each text in a joined batch
_JOIN = " " + _SEP + " "
_SPECIAL = r"<\|startoftext\|>|<\|endoftext\|>|"
_WORDS = regex.compile(_SPECIAL + PATTERN, regex.IGNORECASE)


class TokenizerError(CliplabError):
    """Text that cannot be tokenised as asked (too long, empty batch)."""


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


_BYTE_CHARS = _bytes_to_unicode()  # byte -> BPE character; also a str.translate table for latin-1 text


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def openai_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI's BPE as ``(token -> id, merges in priority order)``, read from the shipped vocabulary file."""
    path = resources.files("cliplab") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    with resources.as_file(path) as p, gzip.open(p, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def _openai_backend() -> _RustTokenizer:
    vocab, merges = openai_vocab()
    backend = _RustTokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=None))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    return backend


class Tokenizer:
    """``tokenizer(texts) -> LongTensor (N, context_length)``; see the module docstring.

    OpenAI's pattern never matches whitespace, so a text's tokens are the concatenation of the tokens of
    its whitespace-separated chunks. A batch is therefore cleaned, joined and split once; each distinct
    chunk is pre-tokenised and run through the BPE once, and kept in a table of token ids (chunk ->
    start, length in one id array), so the rest of the batch is a handful of numpy gathers.
    """

    _MAX_CHUNKS = 1_000_000  # the chunk table starts afresh beyond this

    def __init__(self, backend: _RustTokenizer, context_length: int = 77) -> None:
        self.backend = backend
        self.context_length = context_length
        self.sot_token_id = backend.token_to_id(SOT)
        self.eot_token_id = backend.token_to_id(EOT)
        if self.sot_token_id is None or self.eot_token_id is None:
            raise TokenizerError(f"tokenizer vocabulary lacks {SOT} or {EOT}")
        self._byte_decoder = {c: b for b, c in _BYTE_CHARS.items()}
        self._words: dict[str, list[int]] = {SOT: [self.sot_token_id], EOT: [self.eot_token_id]}
        self._lock = threading.Lock()
        self._reset_chunks()

    def _reset_chunks(self) -> None:
        self._chunk_index: dict[str, int] = {_SEP: 0}  # chunk 0 ends a text and has no tokens
        self._chunk_start = np.zeros(1024, np.int64)
        self._chunk_len = np.zeros(1024, np.int64)
        self._ids = np.zeros(4096, np.int64)
        self._n_ids = 0

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def _word_ids(self, word: str) -> list[int]:
        ids = self._words.get(word)
        if ids is None:  # the word is pre-tokenised already: map its bytes and run the BPE model alone
            chars = word.encode("utf-8").decode("latin-1").translate(_BYTE_CHARS)
            ids = [t.id for t in self.backend.model.tokenize(chars)]
            if len(self._words) < self._MAX_CHUNKS:
                self._words[word] = ids
        return ids

    def _add_chunks(self, chunks: Iterable[str]) -> None:
        """Pre-tokenise and BPE-encode new chunks into the table."""
        for chunk in chunks:
            if chunk in self._chunk_index:
                continue
            ids = [i for w in _WORDS.findall(chunk) for i in self._word_ids(w)]
            k, n = len(self._chunk_index), self._n_ids
            if k >= len(self._chunk_start):
                self._chunk_start = np.resize(self._chunk_start, 2 * k)
                self._chunk_len = np.resize(self._chunk_len, 2 * k)
            if n + len(ids) > len(self._ids):
                self._ids = np.resize(self._ids, 2 * (n + len(ids)))
            self._ids[n : n + len(ids)] = ids
            self._chunk_start[k], self._chunk_len[k] = n, len(ids)
            self._chunk_index[chunk] = k
            self._n_ids = n + len(ids)

    def _clean_join(self, texts: Sequence[str]) -> str:
        """All texts cleaned and lower-cased, each followed by a separator chunk."""
        if is_plain("\n".join(texts)):  # printable ASCII without '&': cleaning is only lower-casing
            return (_JOIN.join(texts) + _JOIN).lower()
        # ftfy and HTML unescaping remove NUL, so the separator cannot come from a cleaned text
        keep = plain_mask(texts)
        return _JOIN.join([t.lower() if k else clean_text(t) for t, k in zip(texts, keep, strict=True)]) + _JOIN

    def _encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of all texts back to back (T,) and each text's token count (N,)."""
        chunks = self._clean_join(texts).split()  # (C,) whitespace-separated chunks
        with self._lock:
            n = len(chunks)
            try:
                idx = np.fromiter(map(self._chunk_index.__getitem__, chunks), np.int64, count=n)
            except KeyError:  # chunks seen for the first time
                unique = dict.fromkeys(chunks)
                new = [c for c in unique if c not in self._chunk_index]
                if len(self._chunk_index) + len(new) > self._MAX_CHUNKS:  # start afresh, keep this batch's
                    self._reset_chunks()
                    new = list(unique)
                self._add_chunks(new)
                idx = np.fromiter(map(self._chunk_index.__getitem__, chunks), np.int64, count=n)
            chunk_len = self._chunk_len[idx]  # (C,) tokens per chunk
            cum = np.cumsum(chunk_len)  # (C,) tokens up to and including each chunk
            total = int(cum[-1])
            # token j of chunk c sits at _ids[start[c] + j]; output position of that token is cum[c] - len[c] + j
            gather = np.repeat(self._chunk_start[idx] - (cum - chunk_len), chunk_len) + np.arange(total)
            flat = self._ids[gather]  # (T,)
        ends = cum[idx == 0]  # (N,) tokens through the end of each text
        lens = np.diff(ends, prepend=0)  # (N,)
        return flat, lens

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        return self._encode_flat([text])[0].tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        flat, lens = self._encode_flat(texts)
        return [a.tolist() for a in np.split(flat, np.cumsum(lens)[:-1])]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids up to the first end-of-text (the padding after it is skipped; id 0 before it is
        the token ``!``); start-of-text tokens are skipped."""
        ids = [int(i) for i in ids]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        pieces = [self.backend.id_to_token(i) for i in ids if i != self.sot_token_id]
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
        n_ctx = self.context_length if context_length is None else context_length
        if n_ctx < 2:
            raise TokenizerError(f"context_length {n_ctx}: needs at least 2 positions (start and end of text)")
        flat, lens = self._encode_flat(texts)
        if not truncate and int(lens.max()) + 2 > n_ctx:
            row = int(np.argmax(lens + 2 > n_ctx))
            text = texts[row]
            short = text if len(text) <= 60 else text[:57] + "..."
            raise TokenizerError(
                f"text {short!r} has {int(lens[row]) + 2} tokens, more than the context length {n_ctx} "
                "(pass truncate=True to cut it)"
            )
        n = len(texts)
        kept = np.minimum(lens, n_ctx - 2)  # (N,) content tokens that fit between start and end
        first = np.cumsum(lens) - lens  # (N,) offset of each text in flat
        rows = np.repeat(np.arange(n), kept)  # (K,)
        cols = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)  # (K,) position in text
        out = np.zeros((n, n_ctx), dtype=np.int64)  # (N, L), zero padding
        out[:, 0] = self.sot_token_id
        out[rows, cols + 1] = flat[np.repeat(first, kept) + cols]
        out[np.arange(n), kept + 1] = self.eot_token_id
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

    The layout is OpenAI's: the 256 byte symbols, the same 256 ending a word (``</w>``), the learned merges
    in priority order, then the start/end tokens as the last two ids. With every byte present in both forms,
    no text is ever dropped, whatever characters it holds. With ``output`` the tokenizer is saved
    (atomically) as one JSON file for :func:`get_tokenizer`.
    """
    base = 2 * 256 + 2
    if vocab_size < base:
        raise TokenizerError(f"vocab_size {vocab_size} is too small: the byte alphabet alone needs "
                             f"2 × 256 + 2 = {base} (each byte, the byte ending a word, start and end)")
    learner = _RustTokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=None))
    learner.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, initial_alphabet=list(_BYTE_CHARS.values()),
                                  end_of_word_suffix="</w>", show_progress=False)
    learner.train_from_iterator((clean_text(t) for t in texts), trainer=trainer)
    backend = _RustTokenizer(models.BPE(*_every_byte_vocab(learner, vocab_size - 2), end_of_word_suffix="</w>",
                                        unk_token=None))
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.BPEDecoder(suffix="</w>")
    backend.add_special_tokens([SOT, EOT])
    tok = Tokenizer(backend, context_length)
    if output is not None:
        write_text(output, backend.to_str())
    return tok


def _every_byte_vocab(learner: _RustTokenizer, size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The learner's merges (in rank order) over a base of every byte and every word-final byte, cut at
    ``size`` tokens. (The trainer's own base holds only the word-final bytes its corpus happened to show,
    and a missing base token is silently dropped by the BPE model.)"""
    learned = json.loads(learner.to_str())["model"]["merges"]
    alphabet = list(_BYTE_CHARS.values())
    vocab = {t: i for i, t in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges = []
    for m in learned:  # "a b" strings or [a, b] pairs, by the library's version
        a, b = m.split(" ") if isinstance(m, str) else m
        if a + b not in vocab:
            if len(vocab) == size:
                break
            vocab[a + b] = len(vocab)
        merges.append((a, b))
    return vocab, merges
