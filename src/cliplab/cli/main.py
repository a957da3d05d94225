"""Entry point of the ``cliplab`` command.

Each subcommand lives in its own module under ``cliplab.cli`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and
returning an exit code). User mistakes raise :class:`cliplab.errors.CliplabError` and are printed as
one line, as are operating-system errors on the user's paths (``OSError``: missing file, no permission,
a file where a folder goes, disk full) and a missing optional package (with the extra that installs it);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import warnings

from cliplab.errors import CliplabError, CliplabWarning
from cliplab.extras import install_hint

# Subcommand modules, in the order `cliplab --help` lists them.
SUBCOMMANDS = [
    "models",
    "convert",
    "tokenizer",
    "train",
    "interpolate",
    "shards",
    "eval",
    "demo",
    "embed",
    "index",
    "search",
    "serve",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    from cliplab import __version__

    parser = argparse.ArgumentParser(prog="cliplab", description="CLIP: load, train, evaluate, search.")
    parser.add_argument("--version", action="version", version=f"cliplab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"cliplab.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # dotted overrides (key=value) may stand anywhere among the flags of commands that take them
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:  # the subcommand's own usage line, not the top-level one
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings():  # restores the process's warning display on the way out
            shown = warnings.showwarning
            warnings.showwarning = functools.partial(_show, shown)
            return int(args.func(args) or 0)
    except CliplabError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional package: name the extra that installs it
        hint = install_hint(err)
        if hint is None:
            raise
        print(f"error: cliplab {args.command} {hint}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the user gave: missing, a file where a folder goes, no permission, disk full
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _show(default, message, category, *args, **kwargs) -> None:
    """cliplab's own warnings as one ``note:`` line; others as Python shows them."""
    if issubclass(category, CliplabWarning):
        print(f"note: {message}", file=sys.stderr)
    else:
        default(message, category, *args, **kwargs)


def _one_line(err: Exception) -> str:
    """The message itself, also when a DataLoader worker wrapped it into "Caught X in DataLoader worker
    process 0. Original Traceback ...": its last line, less the exception's class name."""
    text = str(err).strip()
    if "Original Traceback" not in text:
        return " ".join(text.split())
    last = text.splitlines()[-1]
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").replace("_", "").isalnum() else last


if __name__ == "__main__":
    raise SystemExit(main())
