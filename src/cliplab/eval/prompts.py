"""Prompt templates and class names: built-in sets shipped in ``eval/templates/`` or the user's own files.

Built-in template sets: ``openai-imagenet`` (the 80 prompts OpenAI ensembled for ImageNet) and ``simple``
(``"a photo of a {}."``). Built-in class names: ``imagenet`` (the 1,000 names OpenAI used; like theirs it
holds two duplicates, "missile" and "sunglasses", at ImageNet indices 657/744 and 836/837).

A file holds one entry per line (blank lines and lines starting with ``#`` are skipped) or a JSON list of
non-empty strings; class-name files may also be a JSON object, whose values are taken in key order when the
keys are the integers 0..n-1 (``{"0": "cat", "1": "dog"}``, every one present) and in file order otherwise.
A line-per-entry file remembers its first blank line between two entries (:class:`Lines`): where names are
matched to class numbers by position, the datasets refuse it, since a missing name would shift the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import string
from importlib import resources
from pathlib import Path

from cliplab.errors import CliplabError

__all__ = [
    "BUILTIN_CLASSNAMES",
    "BUILTIN_TEMPLATES",
    "Lines",
    "check_template",
    "is_integer",
    "load_classnames",
    "load_templates",
    "read_list",
]

BUILTIN_TEMPLATES = {"openai-imagenet": "openai-imagenet.txt", "simple": "simple.txt"}
BUILTIN_CLASSNAMES = {"imagenet": "classnames-imagenet.txt"}
_INTEGER = re.compile(r"-?[0-9]+")  # not str.isdigit(): "²" and "--1".lstrip("-") pass it, int() refuses them


def is_integer(text: str) -> bool:
    """Whether ``text`` is a plain decimal integer such as ``7`` or ``-1`` (no sign tricks, no other digits)."""
    return _INTEGER.fullmatch(text) is not None


def _builtin_text(filename: str) -> str:
    return resources.files("cliplab.eval").joinpath("templates", filename).read_text(encoding="utf-8")


class Lines(list):
    """Entries read one per line. ``blank_line`` (``"file:line"``) is the first blank line between two
    entries, or None: skipped, it shifts every later entry by one place, which matters where entries are
    matched to numbers by position."""

    blank_line: str | None = None


def _parse_lines(text: str, where: str = "") -> Lines:
    out, pending = Lines(), None
    for number, line in enumerate((line.strip() for line in text.splitlines()), start=1):
        if not line:
            pending = pending or (f"{where}:{number}" if out else None)
        elif not line.startswith("#"):
            out.blank_line = out.blank_line or pending
            out.append(line)
    return out


def _by_integer_keys(value: dict, where: str) -> list[object]:
    """The values of an object keyed by the integers 0..n-1, in key order; a gap is an error, not a shift."""
    index = {int(k): v for k, v in value.items()}
    missing = next((i for i in range(len(value)) if i not in index), None)
    if missing is not None:
        raise CliplabError(f"{where}: integer keys must be 0..{len(value) - 1}, each once; key {missing} is missing")
    return [index[i] for i in range(len(value))]


def _parse_json(value: object, where: str) -> list[str]:
    if isinstance(value, dict):
        if all(isinstance(k, str) and is_integer(k) for k in value):
            value = _by_integer_keys(value, where)
        else:
            value = list(value.values())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CliplabError(f"{where}: expected a JSON list of strings (or an object of strings)")
    empty = next((i for i, v in enumerate(value) if not v.strip()), None)
    if empty is not None:
        raise CliplabError(f"{where}: entry {empty + 1} is empty (expected non-empty strings)")
    return [v.strip() for v in value]


def _looks_like_json(text: str) -> bool:
    """A JSON list or object, not a line-per-entry file whose first template starts with ``{}``."""
    head = text.lstrip()
    return head.startswith("[") or (head.startswith("{") and head[1:].lstrip()[:1] in ('"', "}")
                                    and not head.startswith("{}"))


def read_list(path: str | os.PathLike[str], what: str = "entries") -> list[str]:
    """Read a list of strings from a text file (one per line) or a JSON list/object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliplabError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CliplabError(f"{path}: cannot read ({err})") from None
    if _looks_like_json(text):
        try:
            items = _parse_json(json.loads(text), str(path))
        except json.JSONDecodeError as err:
            raise CliplabError(f"{path}: malformed JSON (line {err.lineno}: {err.msg})") from None
    else:
        items = _parse_lines(text, str(path))
    if not items:
        raise CliplabError(f"{path}: no {what} found")
    return items


def _resolve(name_or_path: str | os.PathLike[str], builtins: dict[str, str], what: str) -> list[str]:
    key = str(name_or_path)
    if key in builtins:
        return _parse_lines(_builtin_text(builtins[key]), key)
    if Path(key).exists() or os.sep in key or "." in Path(key).name:
        return read_list(key, what)
    hint = "; a template needs a {} where the class name goes" if what == "template" and " " in key else ""
    raise CliplabError(f"{key}: not a file nor a built-in {what} set (built-in: {', '.join(sorted(builtins))})"
                       f"{hint}")


def load_templates(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Prompt templates with a ``{}`` placeholder: a built-in set name or a file."""
    templates = _resolve(name_or_path, BUILTIN_TEMPLATES, "template")
    for i, template in enumerate(templates):
        check_template(template, f"{name_or_path}: template {i + 1}")
    return templates


def check_template(template: object, where: str = "template") -> None:
    """A template is a string with exactly one plain ``{}`` (or ``{0}``) field, where the class name goes."""
    if not isinstance(template, str):
        raise CliplabError(f"{where}: {template!r} is not a string")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise CliplabError(f"{where}: {template!r} is not a valid template ({err}); use {{}} for the class") from None
    if len(fields) != 1 or fields[0] not in (("", "", None), ("0", "", None)):
        raise CliplabError(f"{where}: {template!r} needs exactly one plain {{}} placeholder for the class name")


def load_classnames(name_or_path: str | os.PathLike[str], keyed: bool = False) -> list[str] | dict[str, str]:
    """Class names: a built-in set name (``imagenet``) or a file (lines, JSON list or JSON object; an object
    keyed by 0..n-1 gives its values in key order, otherwise in file order). With ``keyed``, an object
    keyed by class folder or CSV label names comes back as that mapping, to rename classes by name."""
    path = Path(str(name_or_path))
    if keyed and str(name_or_path) not in BUILTIN_CLASSNAMES and path.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data and not all(is_integer(k) for k in data):
                if not all(isinstance(v, str) and v.strip() for v in data.values()):
                    raise CliplabError(f"{path}: expected an object of non-empty strings")
                return {k: v.strip() for k, v in data.items()}
    return _resolve(name_or_path, BUILTIN_CLASSNAMES, "class name")
