"""``cliplab index``: build a FAISS index over an embedding store (exact or approximate)."""

from __future__ import annotations

import argparse
import json

from cliplab.cli.args import count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a FAISS index for an embedding store")
    p.add_argument("store")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"], help="default: flat below 100k items, else hnsw")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="approximate kinds: widen the search until recall@10 vs exact reaches this (default 0.95)")
    p.add_argument("--nprobe", type=count(1), help="ivf: clusters visited per query (fixed; skips tuning)")
    p.add_argument("--ef-search", type=count(1), help="hnsw: search breadth (fixed; skips tuning)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.errors import CliplabError
    from cliplab.infer.index import build_index
    from cliplab.infer.store import EmbeddingStore

    store = EmbeddingStore(args.store)
    kind = args.kind or ("flat" if len(store) < 100_000 else "hnsw")
    if not 0.0 < args.target_recall <= 1.0:
        raise CliplabError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    idx = build_index(store.vectors(), kind, fingerprint=store.fingerprint(), target_recall=args.target_recall,
                      nprobe=args.nprobe, ef_search=args.ef_search)
    idx.save(store.path)
    if args.json:
        print(json.dumps(idx.info))
    else:
        breadth = "".join(f", {k} {idx.info[k]}" for k in ("nlist", "nprobe", "M", "efSearch") if k in idx.info)
        print(f"{kind} index over {idx.info['count']} vectors in {idx.info['build_seconds']} s{breadth}; "
              f"recall@10 vs exact search: {idx.info['recall_at_10']:.3f}")
    return 0
