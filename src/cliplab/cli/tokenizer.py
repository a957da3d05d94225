"""``cliplab tokenizer``: learn a small BPE on captions, or show the ids of a text."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a small BPE vocabulary, or encode a text")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("train", help="learn a byte-level BPE from captions (a .txt, one per line, or a CSV)")
    t.add_argument("--input", required=True)
    t.add_argument("--column", "--csv-caption-key", dest="column", default="title",
                   help="caption column of a CSV input")
    t.add_argument("--separator", "--csv-separator", dest="separator", default=",")
    t.add_argument("--vocab-size", type=int, default=1000, help="tokens in all, at least 514 (default 1000)")
    t.add_argument("--output", required=True, help="tokenizer JSON file to write")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output")
    t.set_defaults(func=run_train)
    e = tsub.add_parser("encode", help="print the token ids of a text")
    e.add_argument("text")
    e.add_argument("--vocab", help="a learned tokenizer JSON (default: OpenAI's BPE)")
    e.set_defaults(func=run_encode)


def run_train(args: argparse.Namespace) -> int:
    from cliplab.cli.args import check_output
    from cliplab.data.csv import read_rows
    from cliplab.errors import CliplabError
    from cliplab.tokenizer import train_bpe

    check_output(args.output, [args.input], args.overwrite)
    src = Path(args.input)
    if src.suffix.lower() in (".csv", ".tsv"):
        texts = [r[0] for r in read_rows(src, [args.column], args.separator)[0]]
    else:
        try:
            texts = src.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise CliplabError(f"{src}: cannot read captions ({err})") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CliplabError(f"{src}: no captions")
    tok = train_bpe(texts, args.vocab_size, args.output)
    print(f"learned {tok.vocab_size} tokens from {len(texts)} captions -> {args.output}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from cliplab.config import TokenizerConfig
    from cliplab.tokenizer import get_tokenizer

    if args.vocab:
        path = Path(args.vocab)
        tok = get_tokenizer(TokenizerConfig(kind="bpe", vocab=path.name), root=path.parent)
    else:
        tok = get_tokenizer()
    ids = tok.encode(args.text)
    print(" ".join(str(i) for i in [tok.sot_token_id, *ids, tok.eot_token_id]))
    return 0
