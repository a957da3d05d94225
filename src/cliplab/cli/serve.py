"""``cliplab serve``: the HTTP service and web page over an embedding store."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service + web page: search, classify, embed")
    p.add_argument("store", nargs="?", help="embedding store folder (from `cliplab embed`)")
    p.add_argument("--checkpoint", help="model to encode queries (default: the one the store was built with)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from cliplab.errors import CliplabError
    from cliplab.infer.server import create_app

    if not 0 <= args.port <= 65535:
        raise CliplabError(f"--port {args.port}: a port is 0-65535")
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    # a loopback server answers only requests addressed to it by a loopback name (no DNS rebinding)
    hosts = ["127.0.0.1", "localhost", "[::1]"] if loopback else None
    app = create_app(args.store, args.checkpoint, device=args.device, allowed_hosts=hosts)
    if not loopback:
        print(f"warning: serving on {args.host}, reachable from other machines")
    print(f"serving {args.store or 'the store'} on http://{args.host if ':' not in args.host else f'[{args.host}]'}:"
          f"{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
