"""``cliplab interpolate``: weight-space ensembling of two checkpoints of one architecture (WiSE-FT)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpolate", help="(1 - alpha) * A + alpha * B, e.g. zero-shot A and fine-tuned B")
    p.add_argument("a", help="first checkpoint (alpha = 0)")
    p.add_argument("b", help="second checkpoint (alpha = 1)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--output", required=True)
    p.add_argument("--activation", choices=["quick_gelu", "gelu"],
                   help="for a bare state dict among the inputs, which cannot tell: quick_gelu (OpenAI's weights, "
                        "the default) or gelu (open_clip's own models)")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow full unpickling / TorchScript, e.g. OpenAI's .pt files (runs code from the file: "
                        "only for trusted files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.checkpoint import save_checkpoint
    from cliplab.cli.args import check_output, staged_output
    from cliplab.errors import CliplabError

    check_output(args.output, [args.a, args.b], args.overwrite)
    if not 0.0 <= args.alpha <= 1.0:
        raise CliplabError(f"--alpha must be in [0, 1], got {args.alpha}")
    a, cfg_a, root = _load(args.a, args)
    b, cfg_b, root_b = _load(args.b, args)
    differ = _differences(_architecture(cfg_a.model), _architecture(cfg_b.model))
    if differ:
        raise CliplabError(f"{args.a} and {args.b} have different architectures ({differ}); cannot interpolate")
    if _tokenizer(cfg_a, root) != _tokenizer(cfg_b, root_b):  # the same ids must mean the same text
        raise CliplabError(f"{args.a} and {args.b} use different tokenizers; cannot interpolate")
    sb = b.state_dict()
    mixed = {k: v if not v.is_floating_point() else (1 - args.alpha) * v + args.alpha * sb[k]
             for k, v in a.state_dict().items()}
    tok = root / cfg_a.tokenizer.vocab if cfg_a.tokenizer.vocab and root else None
    with staged_output(args.output) as out:
        save_checkpoint(mixed, cfg_a, out, tokenizer_file=tok)
    print(f"wrote {args.output} (alpha={args.alpha})")
    return 0


def _load(path: str, args: argparse.Namespace):
    """A model, its config and side-file folder; ``--activation`` applies only to bare state dicts (cliplab
    checkpoints, runs and HF folders record theirs)."""
    from pathlib import Path

    from cliplab.api import load_model
    from cliplab.checkpoint import is_native
    from cliplab.convert.hf import is_hf_dir
    from cliplab.train.state import resolve_run_dir

    p = Path(path)
    described = is_native(p) or is_hf_dir(p) or (p.is_dir() and resolve_run_dir(p) is not None)
    return load_model(path, allow_unsafe=args.allow_unsafe_pickle, activation=None if described else args.activation)


def _architecture(model_cfg):
    """The parts of a model config that shape its weights and their meaning: not the initial temperature
    (a training setting, recorded as 2.65926 by transformers and ln(1/0.07) by OpenAI), nor the initial bias
    beyond whether there is one."""
    import dataclasses

    bias = None if model_cfg.init_logit_bias is None else 0.0
    return dataclasses.replace(model_cfg, init_logit_scale=0.0, init_logit_bias=bias)


def _differences(a, b) -> str:
    """The fields where two model configs differ, e.g. ``embed_dim 32 vs 16``; empty when they agree."""
    import dataclasses

    def flat(cfg, prefix=""):
        out = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):
                out[f"{prefix}{f.name}.type"] = type(value).__name__
                out.update(flat(value, f"{prefix}{f.name}."))
            else:
                out[prefix + f.name] = value
        return out

    fa, fb = flat(a), flat(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if fa.get(k) != fb.get(k)]
    said = []
    for k in keys:
        if k == "init_logit_bias":  # the SigLIP bias: one model has it, the other not
            who = "B" if fa.get(k) is None else "A"
            said.append(f"only {who} has a logit bias (trained with --loss siglip)")
        else:
            said.append(f"{k} {fa.get(k)} vs {fb.get(k)}")
    return "; ".join(said)


def _tokenizer(cfg, root) -> tuple:
    """What a model's token ids mean: the tokenizer kind and, for a learned one, its file's bytes."""
    vocab = root / cfg.tokenizer.vocab if cfg.tokenizer.vocab and root else None
    return cfg.tokenizer.kind, vocab.read_bytes() if vocab is not None and vocab.is_file() else None
