"""Labelled image datasets for zero-shot evaluation and linear probes.

* :class:`ClassFolderDataset`: ``root/<class>/<image>``; classes are the sub-folder names in sorted order,
  numeric order when every one is a number (``0, 1, 2, ..., 10``: ImageNet exported by class index).
* :class:`LabelCsvDataset`: a CSV with an image-path column and a label column. Labels are class indices
  (integers) or class names; relative paths are resolved against the CSV's folder.
* :class:`ImageListDataset`: images by path, each naming where it was listed (``file.csv:row``), for retrieval.

The first two yield ``(transform(image), label)``, the third ``transform(image)``. ``classnames`` (a list in
class order, or a mapping from folder / label name to display name) renames the classes, e.g. WordNet ids to
readable names. Class numbers (integer CSV labels, numbered folders) take their names from a list by
position: class ``k`` is the list's ``k``-th name. An unreadable or missing image raises a one-line
:class:`~cliplab.errors.CliplabError` naming the file; :func:`make_loader` can instead leave such images out and
list them (``on_bad="skip"``), so that one corrupt file does not cost a whole evaluation. A CSV cell whose bytes
are not UTF-8 is always an error (a class name must be readable).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from cliplab.data.batch import BadSample
from cliplab.data.folder import IMAGE_EXTENSIONS, hidden  # hidden: macOS's ._photo.jpg beside each image
from cliplab.errors import CliplabError
from cliplab.eval.prompts import is_integer

__all__ = [
    "ClassFolderDataset",
    "EvalBatches",
    "ImageListDataset",
    "LabelCsvDataset",
    "check_utf8",
    "classes_with_samples",
    "make_loader",
]

Transform = Callable[[Any], torch.Tensor]
ClassNames = Sequence[str] | Mapping[str, str] | None


def _load(path: Path, source: str, transform: Transform) -> torch.Tensor:
    from cliplab.transforms import ImageError, load_image

    try:
        image = load_image(path)
    except FileNotFoundError:
        raise CliplabError(f"{source}: image {path} does not exist") from None
    try:
        return transform(image)
    except ImageError as err:  # load_image's errors name the file; the transform's cannot
        raise ImageError(f"{path}: {err}") from None


def check_utf8(text: str, where: str, what: str) -> None:
    """Refuse a CSV cell that was not UTF-8: :func:`~cliplab.data.csv.read_rows` keeps such bytes as lone
    surrogates (``errors="surrogateescape"``), which print as mojibake and break figures."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CliplabError(f"{where}: {what} is not valid UTF-8") from None


def classes_with_samples(dataset: ClassFolderDataset | LabelCsvDataset, names: Sequence[str] | None = None
                         ) -> list[str]:
    """The entries of ``names`` (default ``dataset.classes``) that at least one sample is labelled with, in
    class order."""
    used = {label for _, label in dataset.samples}
    return [name for i, name in enumerate(dataset.classes if names is None else names) if i in used]


def _check_numbered(numbers: Sequence[int], names: Sequence[str], where: str, what: str) -> None:
    """Class names matched to class numbers by position: enough of them, and a note when the numbers
    leave names unused (a name missing from the file would shift the others and still fit)."""
    import warnings

    from cliplab.errors import CliplabWarning

    blank = getattr(names, "blank_line", None)  # see prompts.Lines
    if blank is not None:
        raise CliplabError(f"{blank}: a blank line between class names; {what} k takes the k-th name, so a "
                           "missing name would shift the rest (remove the line, or write a JSON list)")
    top = max(numbers)
    if top >= len(names):
        raise CliplabError(f"{where}: {what} {top} needs at least {top + 1} class names ({what} k takes the k-th, "
                           f"counting from 0), {len(names)} given")
    if len(names) > top + 1:
        warnings.warn(f"{where}: {len(names)} class names given, but the {what}s only reach {top}: {what} k "
                      "takes the k-th name, the last ones have no images", CliplabWarning, stacklevel=3)


def _rename(labels: list[str], classnames: ClassNames, where: str) -> list[str]:
    """Display names for ``labels`` (folder names or CSV label names) in class order."""
    if classnames is None:
        return list(labels)
    if isinstance(classnames, Mapping):
        missing = [name for name in labels if name not in classnames]
        if missing:
            raise CliplabError(f"{where}: no class name given for {missing[:5]} ({len(missing)} missing)")
        return [classnames[name] for name in labels]
    names = list(classnames)
    if len(names) != len(labels):
        raise CliplabError(f"{where}: {len(names)} class names given for {len(labels)} classes")
    return names


def _numbered(folders: Sequence[str]) -> bool:
    return all(is_integer(name) and not name.startswith("-") for name in folders)


def _class_folders(root: Path) -> list[str]:
    """The sub-folder names, sorted; numerically when all are numbers (as text, folder 10 comes before 2)."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names or not _numbered(names):
        return names
    numbers = [int(name) for name in names]
    if len(set(numbers)) < len(numbers):
        twins = [name for name in names if numbers.count(int(name)) > 1]
        raise CliplabError(f"{root}: class folders {twins[0]!r} and {twins[1]!r} are both class {int(twins[0])}")
    return sorted(names, key=int)


class ClassFolderDataset(Dataset):
    """``root/<class folder>/**/<image>``; label = index of the folder among the sorted folder names (sorted
    as numbers when they all are: with a list of class names, folder ``k`` is then named by its ``k``-th)."""

    def __init__(self, root: str | os.PathLike[str], transform: Transform, classnames: ClassNames = None) -> None:
        self.root, self.transform = Path(root), transform
        if not self.root.is_dir():
            raise CliplabError(f"{self.root}: not a folder")
        self.classes = _class_folders(self.root)
        if not self.classes:
            raise CliplabError(f"{self.root}: no class sub-folders (expected root/<class>/<image>)")
        if _numbered(self.classes) and classnames is not None and not isinstance(classnames, Mapping):
            numbers = [int(folder) for folder in self.classes]
            _check_numbered(numbers, classnames, str(self.root), "class folder")
            classnames = {folder: classnames[k] for folder, k in zip(self.classes, numbers, strict=True)}
        self.classnames = _rename(self.classes, classnames, str(self.root))
        for folder, name in zip(self.classes, self.classnames, strict=True):  # a name the prompts and plots use
            check_utf8(name, f"{self.root}: class folder {folder!r}", "its name")
        self.samples: list[tuple[Path, int]] = [
            (p, label)
            for label, name in enumerate(self.classes)
            for p in sorted((self.root / name).rglob("*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not hidden(p, self.root / name)
        ]
        if not self.samples:
            raise CliplabError(f"{self.root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return _load(path, str(path), self.transform), label

    def source(self, i: int) -> str:
        return str(self.samples[i][0])


def _numbers_as_names(path: Path, n: int, seen: int) -> None:
    """Integer labels without class names: the prompts name the numbers (fine for digits, said for the
    rest); indices far beyond the labels present would make a class (and a confusion row) of each."""
    import warnings

    from cliplab.errors import CliplabWarning

    if n > 1000 and n > 2 * seen:
        raise CliplabError(f"{path}: labels are class indices up to {n - 1}, but only {seen} values appear; give "
                           "--classnames (names for the indices), or write class names as labels")
    warnings.warn(f"{path}: labels are class indices and no --classnames were given, so the prompts name the "
                  "numbers themselves ('a photo of a 3.')", CliplabWarning, stacklevel=3)


def _check_distinct(names: list[str], path: Path) -> None:
    """Labels looked up by name: a name listed twice would make two classes of one label."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CliplabError(f"{path}: labels are class names, and {name!r} is listed twice among the class "
                               "names given (which class would it be?)")
        seen.add(name)


class LabelCsvDataset(Dataset):
    """CSV rows of (image path, label). Integer labels are class indices (``classnames`` then gives their
    names, a list in index order); other labels are class names, ordered as ``classnames`` lists them or,
    without it, sorted."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: Transform,
        img_key: str = "filepath",
        label_key: str = "label",
        sep: str = ",",
        classnames: ClassNames = None,
    ) -> None:
        from cliplab.data.csv import read_rows

        self.path, self.transform = Path(path), transform
        rows, lines = read_rows(self.path, [img_key, label_key], sep)
        if not rows:
            raise CliplabError(f"{self.path}: no data rows")
        for (image, label), line in zip(rows, lines, strict=True):
            if not image.strip() or not label.strip():
                raise CliplabError(f"{self.path}:{line}: empty {img_key if not image.strip() else label_key!r}")
            check_utf8(label, f"{self.path}:{line}", "label")
        raw = [label.strip() for _, label in rows]
        if all(is_integer(label) for label in raw):
            labels = [int(label) for label in raw]
            n = max(labels) + 1
            if classnames is not None and not isinstance(classnames, Mapping):
                n = len(classnames)
            given = "" if classnames is None or isinstance(classnames, Mapping) else f" ({n} class names given)"
            for label, line in zip(labels, lines, strict=True):
                if not 0 <= label < n:
                    raise CliplabError(f"{self.path}:{line}: label {label} is outside 0..{n - 1}{given}")
            if classnames is None:
                _numbers_as_names(self.path, n, len(set(labels)))
            elif given:
                _check_numbered(labels, classnames, str(self.path), "label")
            keys = [str(i) for i in range(n)]
            self.classnames = _rename(keys, classnames, str(self.path))
        else:
            if classnames is None or isinstance(classnames, Mapping):
                keys = sorted(set(raw))
                self.classnames = _rename(keys, classnames, str(self.path))
            else:
                keys = self.classnames = list(classnames)
                _check_distinct(keys, self.path)
            index = {name: i for i, name in enumerate(keys)}
            for label, line in zip(raw, lines, strict=True):
                if label not in index:
                    raise CliplabError(f"{self.path}:{line}: label {label!r} is not among the class names")
            labels = [index[label] for label in raw]
        self.classes = keys
        root = self.path.parent
        self.samples = [(root / image.strip(), label) for (image, _), label in zip(rows, labels, strict=True)]
        self.sources = [f"{self.path}:{line}" for line in lines]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return _load(path, self.sources[i], self.transform), label

    def source(self, i: int) -> str:
        return self.sources[i]


class ImageListDataset(Dataset):
    """``transform(image)`` for each path; ``sources[i]`` (e.g. ``file.csv:row``) names where path ``i`` was
    listed, in the error for a missing image."""

    def __init__(self, paths: Sequence[Path], sources: Sequence[str], transform: Transform) -> None:
        if len(paths) != len(sources):
            raise CliplabError(f"{len(paths)} image paths but {len(sources)} sources")
        self.paths, self.sources, self.transform = list(paths), list(sources), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return _load(self.paths[i], self.sources[i], self.transform)

    def source(self, i: int) -> str:
        return self.sources[i]


class _Guarded(Dataset):
    """``(i, dataset[i])``, or ``(i, BadSample)`` when the image cannot be read."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.dataset[i]
        except CliplabError as err:  # the image's errors (missing, unreadable, too large) name the file
            source = getattr(self.dataset, "source", None)
            return i, BadSample(source(i) if source is not None else f"item {i}", str(err))


def _collate(items: list[tuple[int, Any]]) -> tuple[Any, list[int], list[BadSample]]:
    """(the good items collated, or None; their dataset indices; the bad samples)."""
    good = [(i, item) for i, item in items if not isinstance(item, BadSample)]
    bad = [item for _, item in items if isinstance(item, BadSample)]
    return (default_collate([item for _, item in good]) if good else None), [i for i, _ in good], bad


class EvalBatches:
    """The batches of a dataset in order (``(images, labels)`` for labelled sets, ``images`` for an image
    list). With ``on_bad="skip"`` an image that cannot be read is left out and listed in :attr:`skipped`;
    :attr:`kept` holds the dataset indices of the images yielded, in order. With ``"error"`` the first one
    stops the run, naming the file."""

    def __init__(self, loader: DataLoader, on_bad: str) -> None:
        if on_bad not in ("skip", "error"):
            raise CliplabError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
        self.loader, self.on_bad = loader, on_bad
        self.skipped: list[BadSample] = []
        self.kept: list[int] = []

    def __iter__(self) -> Iterator[Any]:
        self.skipped, self.kept = [], []
        for batch, index, bad in self.loader:
            if bad and self.on_bad == "error":
                raise CliplabError(bad[0].reason)
            self.skipped += bad
            self.kept += index
            if batch is not None:
                yield batch


def make_loader(dataset: Dataset, batch_size: int = 64, num_workers: int = 0, on_bad: str = "error"
                ) -> EvalBatches:
    """Batches of ``(images (B, 3, S, S), labels (B,))`` in dataset order (see :class:`EvalBatches`)."""
    loader = DataLoader(_Guarded(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate)
    return EvalBatches(loader, on_bad)
