"""``cliplab export``: encoders to ONNX, or the whole model to a Hugging Face ``CLIPModel`` folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX (two encoders) or a Hugging Face CLIPModel folder")
    p.add_argument("--checkpoint", required=True, help="anything cliplab.load accepts")
    p.add_argument("--format", choices=["onnx", "hf"], default="onnx")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--allow-unsafe-pickle", action="store_true", help="allow full unpickling (runs code!)")
    p.add_argument("--overwrite", action="store_true", help="replace what the output folder holds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.api import load_model
    from cliplab.cli.args import check_output, staged_output

    check_output(args.output, [args.checkpoint], args.overwrite)
    model, cfg, root = load_model(args.checkpoint, device="cpu", allow_unsafe=args.allow_unsafe_pickle)
    if args.format == "onnx":
        from cliplab.infer.export import export_onnx

        out = export_onnx(model, cfg, args.output, root=root)
    else:
        from cliplab.convert.hf import export_hf

        with staged_output(args.output) as staged:
            export_hf(model, cfg, staged)
        out = args.output
    print(f"wrote {out}")
    return 0
