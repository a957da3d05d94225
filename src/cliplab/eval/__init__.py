"""Evaluation on embeddings: zero-shot classification with prompt ensembles, retrieval Recall@K, linear probes.

Evaluators take an encoder (``encode_image``, ``encode_text``) or plain embeddings; they never import
training code. Submodules are imported on first use::

    from cliplab.eval import zero_shot_classifier, retrieval_metrics, linear_probe
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "load_templates": "cliplab.eval.prompts",
    "load_classnames": "cliplab.eval.prompts",
    "zero_shot_classifier": "cliplab.eval.zeroshot",
    "zero_shot_evaluate": "cliplab.eval.zeroshot",
    "ZeroShotResult": "cliplab.eval.zeroshot",
    "save_classifier": "cliplab.eval.zeroshot",
    "load_classifier": "cliplab.eval.zeroshot",
    "text_fingerprint": "cliplab.eval.zeroshot",
    "retrieval_metrics": "cliplab.eval.retrieval",
    "retrieval_ranks": "cliplab.eval.retrieval",
    "linear_probe": "cliplab.eval.linear_probe",
    "few_shot_probe": "cliplab.eval.linear_probe",
    "extract_features": "cliplab.eval.linear_probe",
    "ProbeResult": "cliplab.eval.linear_probe",
    "ClassFolderDataset": "cliplab.eval.datasets",
    "LabelCsvDataset": "cliplab.eval.datasets",
    "plot_confusion": "cliplab.eval.plots",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cliplab.eval' has no attribute {name!r}")
