"""``cliplab convert``: OpenAI / open_clip / Hugging Face checkpoints → cliplab (or → Hugging Face)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint to cliplab's format (or to a HF CLIPModel folder)")
    p.add_argument("src", help="OpenAI .pt, open_clip checkpoint, HF CLIPModel folder, or a cliplab checkpoint")
    p.add_argument("dst", help="output folder (or .safetensors file for the native format)")
    p.add_argument("--format", choices=["native", "hf"], default="native")
    p.add_argument("--arch", help="architecture to use instead of inferring it from tensor shapes")
    p.add_argument("--activation", choices=["quick_gelu", "gelu"],
                   help="for a bare state dict, which cannot tell: quick_gelu (OpenAI's weights, the default) or "
                        "gelu (open_clip's own models, e.g. LAION's)")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow full unpickling / TorchScript (runs code from the file: only for trusted files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from cliplab.api import load_model
    from cliplab.checkpoint import save_checkpoint, validate_state_dict
    from cliplab.cli.args import check_output, staged_output
    from cliplab.config import CLIPConfig, load_arch

    check_output(args.dst, [args.src], args.overwrite)
    forced = CLIPConfig.for_model(load_arch(args.arch), name=args.arch) if args.arch else None
    if forced and args.activation:
        from cliplab.convert.foreign import with_activation

        forced = dataclasses.replace(forced, model=with_activation(forced.model, args.activation))
    model, cfg, root = load_model(args.src, allow_unsafe=args.allow_unsafe_pickle,
                                  arch=forced.model if forced else None, activation=args.activation)
    if forced:
        validate_state_dict(forced, model.state_dict(), source=args.src)
        cfg = forced
    with staged_output(args.dst) as out:
        if args.format == "hf":
            from cliplab.convert.hf import export_hf

            export_hf(model, cfg, out)
        else:
            tok = root / cfg.tokenizer.vocab if cfg.tokenizer.vocab and root else None
            save_checkpoint(model, cfg, out, tokenizer_file=tok)
    print(f"wrote {args.dst}")
    return 0
