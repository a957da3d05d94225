"""``cliplab demo``: train a small CLIP on a synthetic world and evaluate it (what ``make demo`` runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small CLIP from nothing on synthetic shapes, then evaluate it")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--minutes", type=float, default=9.0, help="training budget (default 9; total ≈ +0.3 min)")
    p.add_argument("--model", default="ViT-Tiny-32px-CBOW")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=100_000, help="upper bound on steps (the budget decides)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 where the hardware has it natively, else fp32")
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--n-retrieval", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from cliplab.demo.run import DemoConfig, run_demo

    cfg = DemoConfig(output=args.output, minutes=args.minutes, model=args.model, batch_size=args.batch_size,
                     steps=args.steps, workers=args.workers, seed=args.seed, eval_per_class=args.eval_per_class,
                     n_retrieval=args.n_retrieval, precision=args.precision)
    report = run_demo(cfg, progress=not args.json)
    if args.json:
        print(json.dumps(report))
    return 0
