"""Prompt templates and class names: built-in sets shipped in ``eval/templates/`` or the user's own files.

Built-in template sets: ``openai-imagenet`` (the 80 prompts OpenAI ensembled for ImageNet) and ``simple``
(``"a photo of a {}."``). Built-in class names: ``imagenet`` (the 1,000 names OpenAI used; like theirs it
holds two duplicates, "missile" and "sunglasses", at ImageNet indices 657/744 and 836/837).

A file holds one entry per line (blank lines and lines starting with ``#`` are skipped) or a JSON list;
class-name files may also be a JSON object, whose values are taken in key order when the keys are
integers (``{"0": "cat", "1": "dog"}``) and in file order otherwise.
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


def _parse_lines(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _parse_json(value: object, where: str) -> list[str]:
    if isinstance(value, dict):
        keys = list(value)
        if all(isinstance(k, str) and is_integer(k) for k in keys):
            keys = sorted(keys, key=int)
        value = [value[k] for k in keys]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CliplabError(f"{where}: expected a JSON list of strings (or an object of strings)")
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
        items = _parse_lines(text)
    if not items:
        raise CliplabError(f"{path}: no {what} found")
    return items


def _resolve(name_or_path: str | os.PathLike[str], builtins: dict[str, str], what: str) -> list[str]:
    key = str(name_or_path)
    if key in builtins:
        return _parse_lines(_builtin_text(builtins[key]))
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
    keyed by integers gives its values in key order, otherwise in file order). With ``keyed``, an object
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
