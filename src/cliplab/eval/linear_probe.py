"""Linear-probe evaluation as in the CLIP paper: L2-regularised logistic regression on frozen features.

scikit-learn's ``LogisticRegression`` (L-BFGS, ``max_iter`` 1000). The regularisation ``C`` (= 1/λ) is chosen
on a validation split carved from the training set, then the probe is refit on the whole training set.
Without ``c_grid`` the search is the paper's: start from C ∈ {1e-6, 1e-4, …, 1e6}, then repeatedly halve
the step around the best value down to 1/8 decade (at most 15 fits). With ``c_grid`` every listed C is
tried. The best C has the highest validation accuracy; ties (common: accuracy is coarse) go to the lower
validation log-loss, then to the smaller C.

When no stratified validation split is possible (some class has a single training sample, as in
1-shot probes) the probe is fit with ``fallback_c`` and ``ProbeResult.val_accuracy`` is None.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError

__all__ = ["FewShotResult", "ProbeResult", "extract_features", "few_shot_probe", "linear_probe"]

ArrayLike = Any  # numpy array or torch tensor


@dataclass
class ProbeResult:
    accuracy: float  # on the test set, fraction in [0, 1]
    c: float  # chosen inverse regularisation strength
    val_accuracy: float | None  # at the chosen C; None when no validation split was possible
    searched: dict[float, float] = field(default_factory=dict)  # C -> validation accuracy
    n_train: int = 0
    n_test: int = 0


@dataclass
class FewShotResult:
    shots: list[int]
    mean: list[float]  # test accuracy averaged over seeds, per k
    std: list[float]  # sample standard deviation over seeds (0 with one seed)
    accuracies: list[list[float]]  # [k][seed]

    def rows(self) -> list[dict[str, Any]]:
        return [{"shots": k, "mean": m, "std": s, "accuracies": a}
                for k, m, s, a in zip(self.shots, self.mean, self.std, self.accuracies, strict=True)]


def _np(x: ArrayLike, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, solver="lbfgs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def _val_score(clf: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, -log-loss) on the validation split: higher is better."""
    from sklearn.metrics import log_loss

    return float(clf.score(x, y)), -float(log_loss(y, clf.predict_proba(x), labels=clf.classes_))


def _split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified (train, val) indices with every class on both sides, or None when impossible."""
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        return None
    rng = np.random.default_rng(seed)
    n_val = min(max(round(val_fraction * len(y)), len(classes)), len(y) - len(classes))
    train, val = [], []
    for c, n_c in zip(classes, counts, strict=True):  # per class: its share of n_val, at least 1, leaving ≥ 1
        idx = rng.permutation(np.flatnonzero(y == c))
        k = min(max(1, round(n_val * n_c / len(y))), n_c - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.concatenate(train), np.concatenate(val)


def _search(fit_score, c_grid: Sequence[float] | None) -> dict[float, tuple[float, ...]]:
    """Validation score (a comparable tuple, higher is better) for each C tried: the given grid, or the
    paper's coarse-to-fine search over log10 C in [-6, 6]."""
    scores: dict[float, tuple[float, ...]] = {}

    def score(log_c: float) -> tuple[float, ...]:
        c = float(10.0**log_c)
        if c not in scores:
            scores[c] = tuple(fit_score(c))
        return scores[c]

    if c_grid is not None:
        for c in c_grid:
            score(math.log10(c))
        return scores
    best = max(range(-6, 7, 2), key=lambda e: (*score(e), -e))
    step = 2.0
    while step > 1 / 8:
        step /= 2
        candidates = [best] + [best + d for d in (-step, step) if -6 <= best + d <= 6]
        best = max(candidates, key=lambda e: (*score(e), -e))
    return scores


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    c_grid: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    fallback_c: float = 1.0,
) -> ProbeResult:
    """Fit a logistic-regression probe on (N, D) features; C chosen on a validation split, refit on all."""
    xtr, ytr = _np(train_x, np.float64), _np(train_y, np.int64).reshape(-1)
    xte, yte = _np(test_x, np.float64), _np(test_y, np.int64).reshape(-1)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise CliplabError(f"linear probe: features must be (N, D); got {xtr.shape} and {xte.shape}")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise CliplabError("linear probe: features and labels differ in length")
    if len(np.unique(ytr)) < 2:
        raise CliplabError("linear probe: the training set needs at least two classes")
    if not 0 < val_fraction < 1:
        raise CliplabError(f"linear probe: val_fraction must be in (0, 1), got {val_fraction}")
    _check_seeds([seed], "linear probe")
    split = _split(ytr, val_fraction, seed)
    searched: dict[float, float] = {}
    if split is None:
        c, val_acc = fallback_c, None
    else:
        tr, va = split
        scores = _search(lambda c: _val_score(_fit(xtr[tr], ytr[tr], c, max_iter), xtr[va], ytr[va]), c_grid)
        c = max(scores, key=lambda k: (*scores[k], -k))
        searched = {k: v[0] for k, v in scores.items()}
        val_acc = searched[c]
    clf = _fit(xtr, ytr, c, max_iter)
    accuracy = float(clf.score(xte, yte)) if len(yte) else float("nan")
    return ProbeResult(accuracy, c, val_acc, searched, len(ytr), len(yte))


def _check_seeds(seeds: Sequence[int], where: str) -> None:
    """Seeds of numpy's generator: non-negative integers (it refuses others with a traceback)."""
    bad = next((s for s in seeds if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0), None)
    if bad is not None:
        raise CliplabError(f"{where}: seed {bad!r} is not a non-negative integer")


def _sample_shots(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of up to ``k`` random samples of every class (all of them when a class has fewer)."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def few_shot_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (0, 1, 2),
    c_grid: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    fallback_c: float = 1.0,
) -> FewShotResult:
    """k-shot probes: for each k and seed, k training samples per class, a probe, its test accuracy."""
    xtr, ytr = _np(train_x, np.float64), _np(train_y, np.int64).reshape(-1)
    if not shots or any(k < 1 for k in shots) or not seeds:
        raise CliplabError("few-shot probe: at least one k is needed, each ≥ 1, and at least one seed")
    _check_seeds(seeds, "few-shot probe")
    accs: list[list[float]] = []
    for k in shots:
        row = []
        for seed in seeds:
            idx = _sample_shots(ytr, k, seed)
            res = linear_probe(xtr[idx], ytr[idx], test_x, test_y, c_grid=c_grid, val_fraction=val_fraction,
                               seed=seed, max_iter=max_iter, fallback_c=fallback_c)
            row.append(res.accuracy)
        accs.append(row)
    mean = [float(np.mean(a)) for a in accs]
    std = [float(np.std(a, ddof=1)) if len(a) > 1 else 0.0 for a in accs]
    return FewShotResult(list(shots), mean, std, accs)


@torch.no_grad()
def extract_features(
    model: Any,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings (N, D) float32 on the CPU and labels (N,) for every batch of (images, labels)."""
    feats, labels = [], []
    for images, y in batches:
        emb = model.encode_image(images.to(device)).float()  # (B, D)
        feats.append((F.normalize(emb, dim=-1) if normalize else emb).cpu())
        labels.append(torch.as_tensor(y).long().view(-1).cpu())
    if not feats:
        raise CliplabError("extract_features: the dataset yielded no images")
    return torch.cat(feats), torch.cat(labels)
