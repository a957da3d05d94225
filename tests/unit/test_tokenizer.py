"""Tokenizer parity with OpenAI's reference implementation (loaded by file path from clip-anytorch)."""

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from cliplab.config import TokenizerConfig
from cliplab.tokenizer import TokenizerError, get_tokenizer, train_bpe

CORPUS = [
    "a photo of a cat.", "A Photo Of A CAT!!", "naïve café — déjà vu", "東京タワーの写真", "emoji 🐱🐶🚗 fun",
    "&amp;amp; and &lt;b&gt; html &#39;quoted&#39;", "numbers 12345 3.14159 1,000,000",
    "don't you've they're I'm we'll he'd it's", "tabs\tand\nnewlines\r\n  spaces", "ÆØÅ æøå ß ﬁ ligature",
    "\x00control\x07chars", "mojibake: cafÃ©", "“curly quotes” ‘single’", "Ünïcödé ÑOÑO", "x" * 300, "", "   ",
    "<|startoftext|> hi", "hello <|endoftext|> world", "a-b_c/d\\e", "Привет мир", "مرحبا بالعالم",
    "🏳️‍🌈 flag", "100% off!!! $$$", "word " * 100, "İstanbul ΣΊΣΥΦΟΣ", "e\u0301 combining", "\u3000wide space",
    # lone and paired surrogates: JSON "\ud800" escapes, and undecodable bytes in argv (surrogateescape)
    "a\ud800", "\ud83d\ude00", "x \udfff y", "caf\udce9",
]


def _oracle():
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-anytorch (the reference tokenizer) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "simple_tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # imports only ftfy, regex, stdlib — not the clip package
    return module.SimpleTokenizer()


def _reference_batch(ref, texts, n_ctx=77):
    sot, eot = ref.encoder["<|startoftext|>"], ref.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), n_ctx, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot, *ref.encode(text), eot]
        if len(ids) > n_ctx:
            ids = ids[:n_ctx]
            ids[-1] = eot
        out[i, : len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture(scope="module")
def ref():
    return _oracle()


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def test_encode_identical(ref, tok):
    for text in CORPUS:
        assert tok.encode(text) == ref.encode(text), repr(text)


def test_batch_identical_with_truncation(ref, tok):
    rng = random.Random(0)
    pool = [w for t in CORPUS for w in t.split()] + ["red", "circle", "left", "of", "3", "!"]
    texts = CORPUS + [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(500)]
    assert torch.equal(tok(texts, truncate=True), _reference_batch(ref, texts))


def _fuzz_text(rng: random.Random) -> str:
    """A text mixing every kind of character the chunked batch path must get right."""
    pieces = [
        lambda: rng.choice(["a", "Photo", "don't", "3.5", "x,y", "<|endoftext|>", "<|startoftext|>x", "'s", "&amp;",
                            "&#0;", "&lt;b&gt;", "ΣΊΣΥΦΟΣ", "İ", "ﬁ", "“q”", "cafÃ©", "e\u0301"]),
        lambda: rng.choice([" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0",
                            "\u3000", "\u2028", "\x00", " \x00 ", "\x07"]),
        lambda: chr(rng.randrange(0x20, 0x7F)),
        lambda: chr(rng.choice([rng.randrange(0x80, 0x3000), rng.randrange(0x3000, 0xD800),
                                rng.randrange(0xE000, 0x30000)])),
    ]
    return "".join(rng.choice(pieces)() for _ in range(rng.randint(0, 25)))


def test_batch_fuzz_identical(ref, tok):
    """Random texts over whitespace kinds, controls, specials, entities and all planes: ids identical,
    whether a text is tokenised alone or inside a batch of mixed plain and non-plain texts."""
    rng = random.Random(1)
    texts = [_fuzz_text(rng) for _ in range(1500)]
    expected = _reference_batch(ref, texts)
    assert torch.equal(get_tokenizer()(texts, truncate=True), expected)
    for i in range(0, 1500, 97):
        assert tok.encode(texts[i]) == ref.encode(texts[i]), repr(texts[i])
    plain = [t for t in texts if t.isascii() and "&" not in t and not any(ord(c) < 32 for c in t)]
    assert torch.equal(tok(plain, truncate=True), _reference_batch(ref, plain))


def test_chunk_table_restarts_when_full(ref):
    small = get_tokenizer()
    small._MAX_CHUNKS = 50
    texts = [f"word{i} other{i}." for i in range(200)]
    for start in range(0, 200, 40):
        batch = texts[start : start + 40]
        assert torch.equal(small(batch), _reference_batch(ref, batch))


def test_special_ids_and_padding(tok):
    ids = tok(["a cat", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, 0] == 49406 and ids[1].tolist()[:3] == [49406, 49407, 0]
    assert (ids[0] == 49407).nonzero().item() == 3 and ids[0, 4:].eq(0).all()
    assert tok.vocab_size == 49408 and (tok.sot_token_id, tok.eot_token_id) == (49406, 49407)


def test_too_long_errors_or_truncates(tok):
    text = "word " * 100
    with pytest.raises(TokenizerError, match=r"'word word .*\.\.\.' has 102 tokens.*truncate=True"):
        tok([text])
    ids = tok([text], truncate=True)
    assert ids[0, -1] == 49407 and ids[0, 0] == 49406
    assert tok([text], context_length=128).shape == (1, 128)
    assert tok([text], context_length=2, truncate=True).tolist() == [[49406, 49407]]
    with pytest.raises(TokenizerError, match="context_length 1: needs at least 2"):
        tok([text], context_length=1, truncate=True)


def test_too_long_boundary(tok):
    """77 positions hold 75 tokens between start and end of text; 76 tokens are one too many."""
    assert len(tok.encode("a " * 76)) == 76
    with pytest.raises(TokenizerError, match="has 78 tokens, more than the context length 77"):
        tok(["a " * 76])
    row = tok(["a " * 75])[0]
    assert row[-1] == 49407 and row[-2] != 49407 and row[0] == 49406


def test_empty_list_is_an_error(tok):
    with pytest.raises(TokenizerError, match="empty"):
        tok([])


def test_decode_round_trip(tok):
    assert tok.decode(tok("A red Circle, left of 3 stars!")[0].tolist()) == "a red circle , left of 3 stars !"
    ids = tok('!"# x!')[0].tolist()
    assert ids[1] == 0  # id 0 is the token "!", as well as the padding after the end of text
    assert tok.decode(ids) == '!"# x !'


def test_context_length_zero_is_refused(tok):
    with pytest.raises(TokenizerError, match="context_length 0"):
        tok("a cat", context_length=0)


def test_train_bpe_save_load(tmp_path):
    captions = [f"a {c} {s} on the {p}" for c in ("red", "green", "blue") for s in ("circle", "star")
                for p in ("left", "right")] * 5
    tok = train_bpe(captions, vocab_size=600, output=tmp_path / "tok.json", context_length=16)
    assert 514 < tok.vocab_size <= 600 and tok.eot_token_id == tok.vocab_size - 1
    again = get_tokenizer(TokenizerConfig(kind="bpe", vocab="tok.json", context_length=16), root=tmp_path)
    ids = again(["a red circle on the left"])
    assert torch.equal(ids, tok(["a red circle on the left"]))
    assert ids.shape == (1, 16) and ids[0, 0] == again.sot_token_id
    assert again.decode(ids[0].tolist()) == "a red circle on the left"
    with pytest.raises(TokenizerError, match=r"missing\.json"):
        get_tokenizer(TokenizerConfig(kind="bpe", vocab="missing.json"), root=tmp_path)


def test_learned_bpe_never_drops_a_character():
    """The learned vocabulary holds every byte, also as the end of a word, as OpenAI's does: characters the
    corpus never showed (or never showed at the end of a word) still come back from decode."""
    tok = train_bpe(["a red circle", "a blue square"] * 3, vocab_size=530)
    assert tok.vocab_size <= 530 and tok.encode("a red circle") == [tok.backend.token_to_id("a</w>"),
                                                                     tok.backend.token_to_id("red</w>"),
                                                                     tok.backend.token_to_id("circle</w>")]
    for text in ("q", "x y z", "7 9", "a green star", "a pink hexagon", "caf\u00e9 \U0001f600 \u732b !"):
        assert tok.decode(tok.encode(text)) == " ".join(text.split()), text
    with pytest.raises(TokenizerError, match="514"):
        train_bpe(["a b"], vocab_size=513)
