"""``cliplab search``: query an embedding store by text or by image."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an embedding store by text or image")
    p.add_argument("store", help="embedding store folder")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", help="image query (image → image search)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--checkpoint", help="model for the query (default: the store's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cliplab.api import load
    from cliplab.errors import CliplabError
    from cliplab.infer.index import load_or_build_index
    from cliplab.infer.store import EmbeddingStore
    from cliplab.transforms import load_image

    if (args.query is None) == (args.image is None):
        raise CliplabError("give either a text query or --image (not both)")
    if args.k < 1:
        raise CliplabError("-k must be at least 1")
    store = EmbeddingStore(args.store)
    model, preprocess, tokenizer = load(args.checkpoint or store.model_id)
    store.check_model(model, args.checkpoint or store.model_id)
    with torch.no_grad():
        if args.image:
            try:
                pixels = preprocess(load_image(args.image))[None]  # (1, 3, S, S)
            except CliplabError as err:  # load_image names the file; preprocessing limits do not
                raise CliplabError(err if args.image in str(err) else f"{args.image}: {err}") from None
            q = model.encode_image(pixels, normalize=True)
        else:
            q = model.encode_text(tokenizer([args.query], truncate=True), normalize=True)
    scores, ids = load_or_build_index(store).search(q.float().numpy(), args.k)
    meta = store.metadata().to_pylist()
    results = [
        {"rank": r + 1, "id": int(i), "score": float(s), "path": meta[i]["path"], "caption": meta[i].get("caption")}
        for r, (s, i) in enumerate(zip(scores[0].tolist(), ids[0].tolist(), strict=True))
        if i >= 0
    ]
    if args.json:
        print(json.dumps({"query": args.query or args.image, "results": results}))
    else:
        for r in results:
            print(f"{r['rank']:>3}  {r['score']:.4f}  {r['path'] if r['path'] is not None else r['caption']}")
    return 0
