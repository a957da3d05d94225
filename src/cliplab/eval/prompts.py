"""Prompt templates and class names: built-in sets shipped in ``eval/templates/`` or the user's own files.

Built-in template sets: ``openai-imagenet`` (the 80 prompts OpenAI ensembled for ImageNet) and ``simple``
(``"a photo of a {}."``). Built-in class names: ``imagenet`` (the 1,000 names OpenAI used; like theirs it
holds two duplicates, "missile" and "sunglasses", at ImageNet indices 657/744 and 836/837).

A file holds one entry per line (blank lines and lines starting with ``#`` are skipped) or a JSON list;
class-name files may also be a JSON object, whose values are taken in key order when the keys are
integers (``{"0": "cat", "1": "dog"}``) and in file order otherwise.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from cliplab.errors import CliplabError

__all__ = [
    "BUILTIN_CLASSNAMES",
    "BUILTIN_TEMPLATES",
    "check_template",
    "load_classnames",
    "load_templates",
    "read_list",
]

BUILTIN_TEMPLATES = {"openai-imagenet": "openai-imagenet.txt", "simple": "simple.txt"}
BUILTIN_CLASSNAMES = {"imagenet": "classnames-imagenet.txt"}


def _builtin_text(filename: str) -> str:
    return resources.files("cliplab.eval").joinpath("templates", filename).read_text(encoding="utf-8")


def _parse_lines(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _parse_json(value: object, where: str) -> list[str]:
    if isinstance(value, dict):
        keys = list(value)
        if all(isinstance(k, str) and k.lstrip("-").isdigit() for k in keys):
            keys = sorted(keys, key=int)
        value = [value[k] for k in keys]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CliplabError(f"{where}: expected a JSON list of strings (or an object of strings)")
    return [v.strip() for v in value]


def read_list(path: str | os.PathLike[str], what: str = "entries") -> list[str]:
    """Read a list of strings from a text file (one per line) or a JSON list/object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliplabError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CliplabError(f"{path}: cannot read ({err})") from None
    if text.lstrip().startswith(("[", "{")):
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
    raise CliplabError(f"{key}: not a file nor a built-in {what} set (built-in: {', '.join(sorted(builtins))})")


def load_templates(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Prompt templates with a ``{}`` placeholder: a built-in set name or a file."""
    templates = _resolve(name_or_path, BUILTIN_TEMPLATES, "template")
    for i, template in enumerate(templates):
        check_template(template, f"{name_or_path}: template {i + 1}")
    return templates


def check_template(template: str, where: str = "template") -> None:
    """A template must hold exactly one ``{}`` and no other format fields."""
    try:
        filled = template.format("\0")
    except (IndexError, KeyError, ValueError) as err:
        raise CliplabError(f"{where}: {template!r} is not a valid template ({err}); use {{}} for the class") from None
    if filled.count("\0") != 1:
        raise CliplabError(f"{where}: {template!r} needs exactly one {{}} placeholder for the class name")


def load_classnames(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Class names: a built-in set name (``imagenet``) or a file (lines, JSON list or JSON object)."""
    return _resolve(name_or_path, BUILTIN_CLASSNAMES, "class name")
