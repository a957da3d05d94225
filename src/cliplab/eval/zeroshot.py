"""Zero-shot classification as in the CLIP paper: a linear classifier built from prompt ensembles.

Each class name is put into every template, the prompts are embedded and L2-normalised, averaged per class
and normalised again; the columns of the resulting (D, C) matrix are the class weights. An image is
assigned the class whose weight has the highest cosine similarity with its normalised embedding.

The model only needs ``encode_image(images, normalize=False)`` and ``encode_text(tokens, normalize=False)``;
the tokenizer is any callable ``list[str] -> LongTensor (N, L)``. Put the model in eval mode first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError
from cliplab.eval.metrics import (
    confusion_matrix,
    mean_per_class_recall,
    namesakes,
    per_class_recall,
    predictions,
    topk_correct,
)
from cliplab.eval.prompts import check_template, load_templates
from cliplab.fileio import atomic_path
from cliplab.model.text_transformer import batches_by_length

__all__ = [
    "Encoder",
    "SavedClassifier",
    "ZeroShotResult",
    "load_classifier",
    "resolve_templates",
    "save_classifier",
    "text_fingerprint",
    "zero_shot_classifier",
    "zero_shot_evaluate",
]

CLASSIFIER_FORMAT = "cliplab-zeroshot-classifier"


class Encoder(Protocol):
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


def resolve_templates(templates: Sequence[str] | str) -> list[str]:
    """A single template (a string holding ``{}``), a built-in set name or file, or a list of templates."""
    if isinstance(templates, str | os.PathLike):
        if isinstance(templates, str) and ("{}" in templates or "{0}" in templates):
            templates = [templates]
        else:
            return load_templates(templates)
    out = list(templates)
    if not out:
        raise CliplabError("templates: the list is empty")
    for i, template in enumerate(out):
        check_template(template, f"template {i + 1}")
    return out


@torch.no_grad()
def _tokenize(tokenizer: Any, prompts: list[str], classnames: list[str], classes: torch.Tensor) -> torch.Tensor:
    """``tokenizer(prompts)``; a prompt too long for the context names its class, which the user can rename."""
    from cliplab.tokenizer import TokenizerError

    try:
        return tokenizer(prompts)
    except TokenizerError:
        for prompt, c in zip(prompts, classes.tolist(), strict=False):
            try:
                tokenizer([prompt])
            except TokenizerError as err:
                name = classnames[c] if len(classnames[c]) <= 40 else classnames[c][:37] + "..."
                raise CliplabError(f"class {name!r}: {err.args[0].split(' (pass truncate')[0]}; give it a "
                                   "shorter name (--classnames)") from None
        raise


@torch.no_grad()  # memory stays at (C, D): no graph kept over the thousands of prompts
def zero_shot_classifier(
    model: Encoder,
    tokenizer: Any,
    classnames: Sequence[str],
    templates: Sequence[str] | str,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> torch.Tensor:
    """Class weights (D, C), float32 on ``device``: per class, the re-normalised mean of normalised prompts.

    Prompts are embedded ``batch_size`` at a time, texts of like lengths together, and summed per class as
    they come, so memory stays at (C, D) however many templates there are. Each distinct prompt is embedded
    once: a class name listed twice (ImageNet's "missile") gets a copy of the same column, bit for bit, so
    the two tie whatever the batching, and a template listed twice counts twice without a second pass.
    """
    classnames = list(classnames)
    if not classnames:
        raise CliplabError("classnames: the list is empty")
    templates = resolve_templates(templates)
    names = list(dict.fromkeys(classnames))
    distinct = list(dict.fromkeys(templates))
    prompts = [t.format(name) for name in names for t in distinct]  # class-major
    classes = torch.arange(len(names)).repeat_interleave(len(distinct))  # (P,): each prompt's class
    repeats = torch.tensor([float(templates.count(t)) for t in distinct]).repeat(len(names))  # (P,)
    sums: torch.Tensor | None = None
    window = 64 * batch_size  # prompts tokenised at a time, then embedded in batches of like lengths
    for start in range(0, len(prompts), window):
        tokens = _tokenize(tokenizer, prompts[start : start + window], names, classes[start:])  # (W, L)
        for rows in batches_by_length(tokens, batch_size):
            emb = F.normalize(model.encode_text(tokens[rows].to(device)).float(), dim=-1)  # (B, D)
            if sums is None:
                sums = torch.zeros(len(names), emb.shape[1], device=emb.device)  # (C', D)
            emb = emb * repeats[start + rows, None].to(emb.device)
            sums.index_add_(0, classes[start + rows].to(emb.device), emb)
    assert sums is not None
    weights = F.normalize(sums / len(templates), dim=-1)  # (C', D)
    column = {name: i for i, name in enumerate(names)}
    weights = weights[torch.tensor([column[name] for name in classnames], device=weights.device)]  # (C, D)
    return weights.T.contiguous().to(device)  # (D, C)


@dataclass
class ZeroShotResult:
    """Accuracy (fractions in [0, 1]) and the confusion matrix (C, C): row = true class, column = predicted."""

    top1: float
    top5: float
    mean_per_class_recall: float
    confusion: torch.Tensor
    n: int

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    def per_class(self, classnames: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per class: index, name, support, correct, recall (None when the class has no samples)."""
        recall = per_class_recall(self.confusion)
        support = self.confusion.sum(dim=1)
        rows = []
        for c in range(self.num_classes):
            r = float(recall[c])
            rows.append({
                "class": c,
                "name": classnames[c] if classnames is not None else str(c),
                "support": int(support[c]),
                "correct": int(self.confusion[c, c]),
                "recall": None if r != r else r,  # NaN -> None (JSON-friendly)
            })
        return rows

    def to_dict(self, classnames: Sequence[str] | None = None, confusion: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "top1": self.top1,
            "top5": self.top5,
            "mean_per_class_recall": self.mean_per_class_recall,
            "n": self.n,
            "num_classes": self.num_classes,
            "per_class": self.per_class(classnames),
        }
        if confusion:
            out["confusion"] = self.confusion.tolist()
        return out


@torch.no_grad()
def zero_shot_evaluate(
    model: Encoder,
    classifier: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
    num_classes: int | None = None,
    classnames: Sequence[str] | None = None,
) -> ZeroShotResult:
    """Classify every image of ``batches`` ((B, 3, H, W) images, (B,) labels) with ``classifier`` (D, C).

    ``top5`` is top-min(5, C). ``mean_per_class_recall`` averages over the classes that have samples. Ties are
    pessimistic (see :mod:`cliplab.eval.metrics`): a class tied with the true one for the highest logit is
    the prediction, so ``top1`` is the confusion matrix's trace over ``n``. Given ``classnames``, a name listed
    twice (whose columns are equal, so the two always tie) counts for the first of them, as argmax decides in
    OpenAI's evaluation.
    """
    num_classes = classifier.shape[1] if num_classes is None else num_classes
    if num_classes != classifier.shape[1]:
        raise CliplabError(f"num_classes is {num_classes} but the classifier has {classifier.shape[1]} classes")
    weights = classifier.to(device).float()  # (D, C)
    if classnames is not None and len(classnames) != num_classes:
        raise CliplabError(f"{len(classnames)} class names for a classifier of {num_classes} classes")
    groups = None if classnames is None else namesakes(classnames)  # (C,)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    hits1 = hits5 = n = 0
    for images, labels in batches:
        labels = torch.as_tensor(labels).long().view(-1).cpu()
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0]
            raise CliplabError(f"label {int(bad)} is outside the {num_classes} classes of the classifier")
        feats = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)  # (B, D)
        logits = (feats @ weights).cpu()  # (B, C)
        hits = topk_correct(logits, labels, (1, 5), groups)
        hits1, hits5, n = hits1 + hits[1], hits5 + hits[5], n + labels.numel()
        confusion += confusion_matrix(predictions(logits, labels, groups), labels, num_classes)
    if n == 0:
        raise CliplabError("zero-shot evaluation: the dataset yielded no images")
    return ZeroShotResult(hits1 / n, hits5 / n, mean_per_class_recall(confusion), confusion, n)


# --------------------------------------------------------------------------- save / load


class SavedClassifier(NamedTuple):
    weights: torch.Tensor  # (D, C)
    classnames: list[str]
    templates: list[str]
    text_fingerprint: str | None = None  # of the text tower that embedded the prompts (None: not recorded)


def text_fingerprint(model: torch.nn.Module) -> str:
    """A digest of everything a zero-shot classifier depends on in ``model``: its text tower's tensors and
    the text projection. A model fine-tuned with the text tower locked keeps it."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("text."):
            t = tensor.detach().float().cpu().contiguous()
            digest.update(f"{name}{tuple(t.shape)}".encode())
            digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def save_classifier(
    path: str | os.PathLike[str], weights: torch.Tensor, classnames: Sequence[str], templates: Sequence[str] | str,
    fingerprint: str | None = None,
) -> None:
    """Write the (D, C) weights as safetensors with the class names, the templates and the text tower's
    :func:`text_fingerprint` in its metadata (atomic)."""
    from safetensors.torch import save_file

    classnames = list(classnames)
    templates = [templates] if isinstance(templates, str) else list(templates)
    if weights.ndim != 2 or weights.shape[1] != len(classnames):
        raise CliplabError(f"classifier: weights {tuple(weights.shape)} do not match {len(classnames)} class names")
    meta = {"format": CLASSIFIER_FORMAT, "version": "1",
            "classnames": json.dumps(classnames), "templates": json.dumps(templates)}
    if fingerprint is not None:
        meta["text_fingerprint"] = fingerprint
    tensor = weights.detach().float().cpu().contiguous()
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"weights": tensor}, str(tmp), metadata=meta)


def load_classifier(path: str | os.PathLike[str]) -> SavedClassifier:
    """Read a classifier written by :func:`save_classifier`: ``(weights (D, C), classnames, templates,
    text_fingerprint or None)``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CliplabError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CLASSIFIER_FORMAT or "weights" not in fh.keys():  # noqa: SIM118
                raise CliplabError(f"{path}: not a cliplab zero-shot classifier")
            weights = fh.get_tensor("weights")
        classnames, templates = json.loads(meta["classnames"]), json.loads(meta["templates"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise CliplabError(f"{path}: unreadable classifier ({type(err).__name__}: {err})") from None
    if weights.ndim != 2 or weights.shape[1] != len(classnames):
        raise CliplabError(f"{path}: weights {tuple(weights.shape)} do not match {len(classnames)} class names")
    return SavedClassifier(weights, classnames, templates, meta.get("text_fingerprint"))
