"""``cliplab models``: the shipped architectures with their size, towers and input size."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list architectures (parameters, towers, input size)")
    p.add_argument("--json", action="store_true", help="print one JSON list as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.api import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<22}{'params':>14}  {'vision':<8}{'text':<13}{'image':>6}{'embed':>7}  pretrained")
    for r in rows:
        print(
            f"{r['name']:<22}{r['params']:>14,}  {r['vision']:<8}{r['text']:<13}{r['image_size']:>6}"
            f"{r['embed_dim']:>7}  {', '.join(r['pretrained']) or '-'}"
        )
    return 0
