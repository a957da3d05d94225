"""``cliplab search``: query an embedding store by text or by image."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


class _IntermixedParser(argparse.ArgumentParser):
    """Options anywhere among the positionals: ``search STORE -k 3 "red bicycle"`` as well as
    ``search STORE "red bicycle" -k 3`` (argparse alone binds an optional positional at its first chance)."""

    _inner = False  # parse_known_intermixed_args calls parse_known_args itself: that call parses plainly

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an embedding store by text or image")
    p.__class__ = _IntermixedParser  # the subparsers action makes plain parsers; this one parses intermixed
    p.add_argument("store", help="embedding store folder")
    p.add_argument("query", nargs="?", help="text query")
    p.add_argument("--image", help="image query (image → image search)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--checkpoint", help="model for the query (default: the store's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)


def _image_pixels(path: str, preprocess: Any) -> Any:
    """The query image preprocessed (1, 3, S, S); a one-line error naming it when it cannot be used."""
    from cliplab.errors import CliplabError
    from cliplab.transforms import load_image

    try:
        return preprocess(load_image(path))[None]
    except CliplabError as err:  # load_image names the file; preprocessing limits do not
        raise CliplabError(err if path in str(err) else f"{path}: {err}") from None
    except (SyntaxError, ValueError) as err:  # a parser Pillow runs lazily (EXIF, say) gave up
        raise CliplabError(f"{path}: unreadable image ({err})") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from cliplab.api import load
    from cliplab.errors import CliplabError
    from cliplab.infer.index import load_or_build_index
    from cliplab.infer.store import EmbeddingStore

    if (args.query is None) == (args.image is None):
        raise CliplabError("give either a text query or --image (not both)")
    if args.query is not None and not args.query.strip():
        raise CliplabError("the text query is empty")
    if args.k < 1:
        raise CliplabError("-k must be at least 1")
    store = EmbeddingStore(args.store)
    checkpoint = store.query_model(args.checkpoint)
    model, preprocess, tokenizer = load(checkpoint)
    store.check_model(model, checkpoint)
    with torch.no_grad():
        if args.image:
            q = model.encode_image(_image_pixels(args.image, preprocess), normalize=True)
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
