"""``cliplab interpolate``: weight-space ensembling of two checkpoints of one architecture (WiSE-FT)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="(1 - alpha) * A + alpha * B, e.g. zero-shot A and fine-tuned B")
    p.add_argument("a", help="first checkpoint (alpha = 0)")
    p.add_argument("b", help="second checkpoint (alpha = 1)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.api import load_model
    from cliplab.checkpoint import save_checkpoint
    from cliplab.cli.args import check_output
    from cliplab.errors import CliplabError

    check_output(args.output, [args.a, args.b], args.overwrite)
    if not 0.0 <= args.alpha <= 1.0:
        raise CliplabError(f"--alpha must be in [0, 1], got {args.alpha}")
    a, cfg_a, root = load_model(args.a)
    b, cfg_b, root_b = load_model(args.b)
    if cfg_a.model != cfg_b.model:
        raise CliplabError(f"{args.a} and {args.b} have different architectures; cannot interpolate")
    if _tokenizer(cfg_a, root) != _tokenizer(cfg_b, root_b):  # the same ids must mean the same text
        raise CliplabError(f"{args.a} and {args.b} use different tokenizers; cannot interpolate")
    sb = b.state_dict()
    mixed = {k: v if not v.is_floating_point() else (1 - args.alpha) * v + args.alpha * sb[k]
             for k, v in a.state_dict().items()}
    tok = root / cfg_a.tokenizer.vocab if cfg_a.tokenizer.vocab and root else None
    save_checkpoint(mixed, cfg_a, args.output, tokenizer_file=tok)
    print(f"wrote {args.output} (alpha={args.alpha})")
    return 0


def _tokenizer(cfg, root) -> tuple:
    """What a model's token ids mean: the tokenizer kind and, for a learned one, its file's bytes."""
    vocab = root / cfg.tokenizer.vocab if cfg.tokenizer.vocab and root else None
    return cfg.tokenizer.kind, vocab.read_bytes() if vocab is not None and vocab.is_file() else None
