"""``cliplab shards``: write WebDataset tar shards from a CSV or a folder of images + captions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write WebDataset tar shards from a CSV or an image+caption folder")
    p.add_argument("--input", required=True, help="a CSV/TSV file or a folder of images with .txt captions")
    p.add_argument("--output", required=True, help="folder for the .tar shards")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default="", help="shard file name prefix")
    p.add_argument("--csv-img-key", default="filepath")
    p.add_argument("--csv-caption-key", default="title")
    p.add_argument("--csv-separator", default=",")
    p.set_defaults(func=run)


def _pairs(args: argparse.Namespace, skipped: list[str]) -> Iterator[tuple[Path, str]]:
    from cliplab.data.csv import read_rows
    from cliplab.data.folder import list_images
    from cliplab.data.shards import member_key

    src = Path(args.input)
    if src.is_dir():
        for image in list_images(src):
            txt = image.with_suffix(".txt")
            try:
                caption = txt.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                skipped.append(f"{image}: caption {txt.name} unreadable ({type(err).__name__})")
                continue
            if caption:
                yield image, caption
            else:
                skipped.append(f"{image}: empty caption")
        return
    rows, lines = read_rows(src, [args.csv_img_key, args.csv_caption_key], args.csv_separator)
    for (image, caption), line in zip(rows, lines, strict=True):
        path = src.parent / image
        if not image or not path.is_file():
            skipped.append(f"{src}:{line}: image {image!r} not found")
        elif not caption.strip():
            skipped.append(f"{src}:{line}: empty caption")
        elif member_key(path) is None:
            skipped.append(f"{src}:{line}: {image!r} is not a JPEG, PNG, WebP, BMP, GIF or TIFF image")
        else:
            try:
                yield path, caption.strip().encode("utf-8").decode("utf-8")
            except UnicodeEncodeError:
                skipped.append(f"{src}:{line}: caption is not valid UTF-8")


def run(args: argparse.Namespace) -> int:
    from cliplab.data.shards import write_shards
    from cliplab.errors import CliplabError

    if args.per_shard < 1:
        raise CliplabError("--per-shard must be at least 1")
    skipped: list[str] = []
    shards = write_shards(_pairs(args, skipped), args.output, args.per_shard, args.prefix)
    for line in skipped[:20]:
        print(f"skipped {line}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more", file=sys.stderr)
    if not shards:
        raise CliplabError(f"{args.input}: no usable image-caption pairs (skipped {len(skipped)}), so no shards")
    print(f"wrote {len(shards)} shard(s) to {args.output}; skipped {len(skipped)} sample(s)")
    return 0
