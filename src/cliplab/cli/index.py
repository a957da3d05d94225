"""``cliplab index``: build a FAISS index over an embedding store (exact or approximate)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build a FAISS index for an embedding store")
    p.add_argument("store")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"], help="default: flat below 100k items, else hnsw")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cliplab.infer.index import build_index
    from cliplab.infer.store import EmbeddingStore

    store = EmbeddingStore(args.store)
    kind = args.kind or ("flat" if len(store) < 100_000 else "hnsw")
    idx = build_index(store.vectors(), kind, fingerprint=store.fingerprint())
    idx.save(store.path)
    if args.json:
        print(json.dumps(idx.info))
    else:
        print(f"{kind} index over {idx.info['count']} vectors in {idx.info['build_seconds']} s; "
              f"recall@10 vs exact search: {idx.info['recall_at_10']:.3f}")
    return 0
