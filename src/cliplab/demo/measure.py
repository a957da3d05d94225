"""Every figure of the demo report, measured on fresh synthetic scenes with the paper's protocols."""

from __future__ import annotations

from typing import Any

import torch

from cliplab.data.synthetic import EVAL_TEMPLATES, SyntheticWorld, labelled_set, retrieval_set
from cliplab.eval.linear_probe import linear_probe
from cliplab.eval.retrieval import retrieval_metrics
from cliplab.eval.zeroshot import zero_shot_classifier, zero_shot_evaluate

__all__ = ["evaluate_world", "model_device", "zero_shot_split"]

SINGLE_TEMPLATE = ("a photo of a {}.",)


def model_device(model: Any) -> torch.device:
    """Where the model's weights are (the demo trains on CUDA where there is one)."""
    return next(model.parameters()).device


def _batches(items: list, preprocess: Any, batch_size: int = 256):
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        yield torch.stack([preprocess(im) for im, _ in chunk]), torch.tensor([k for _, k in chunk])


@torch.no_grad()
def zero_shot_split(model: Any, preprocess: Any, classifier: torch.Tensor, items: list) -> dict[str, Any]:
    result = zero_shot_evaluate(model, classifier, _batches(items, preprocess), device=model_device(model))
    return {"top1": result.top1, "top5": result.top5, "n": result.n}


@torch.no_grad()
def evaluate_world(model: Any, preprocess: Any, tokenizer: Any, world: SyntheticWorld, n_per_class: int = 20,
                   n_retrieval: int = 500, seed: int = 7) -> dict[str, Any]:
    """Zero-shot top-1/top-5 over all colour×shape classes on held-out and seen combinations, with one
    template and with the ensemble; retrieval R@1/5 on fresh scenes; a linear probe on frozen features."""
    model.eval()
    dev = model_device(model)
    names = world.classnames()
    held = labelled_set(world, n_per_class, "heldout", seed=seed)
    seen = labelled_set(world, max(2, n_per_class // 4), "train", seed=seed)
    report: dict[str, Any] = {"classes": len(names), "chance_top1": 1 / len(names),
                              "chance_top5": min(5, len(names)) / len(names),
                              "held_out_pairs": [f"{c} {s}" for c, s in world.held_out_pairs()]}
    for name, templates in (("single", SINGLE_TEMPLATE), ("ensemble", EVAL_TEMPLATES)):
        classifier = zero_shot_classifier(model, tokenizer, names, list(templates), device=dev)
        report[f"zeroshot_{name}"] = {
            "templates": len(templates),
            "held_out": zero_shot_split(model, preprocess, classifier, held),
            "seen": zero_shot_split(model, preprocess, classifier, seen),
        }
    scenes = retrieval_set(world, n_retrieval, seed=seed)
    img = torch.cat([model.encode_image(x.to(dev), normalize=True).float().cpu() for x, _ in
                     _batches([(im, 0) for im, _ in scenes], preprocess)])  # (N, D)
    txt = torch.cat([model.encode_text(tokenizer([c for _, c in scenes[i : i + 256]], truncate=True).to(dev),
                                       normalize=True).float().cpu() for i in range(0, len(scenes), 256)])  # (N, D)
    r = retrieval_metrics(img, txt, torch.arange(len(scenes)), ks=(1, 5))
    report["retrieval"] = {k: r[k] for k in ("image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1",
                                             "text_to_image_R@5")}
    report["retrieval"]["n"] = len(scenes)
    report["retrieval"]["chance_R@1"] = 1 / len(scenes)
    report["retrieval"]["chance_R@5"] = min(5, len(scenes)) / len(scenes)
    train = labelled_set(world, 8, "all", seed=seed + 1)
    test = labelled_set(world, 4, "all", seed=seed + 2)

    def feats(items: list) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*[(model.encode_image(x.to(dev), normalize=True).float().cpu(), y)
                       for x, y in _batches(items, preprocess)], strict=True)
        return torch.cat(xs), torch.cat(ys)

    probe = linear_probe(*feats(train), *feats(test), c_grid=[0.1, 1.0, 10.0, 100.0])
    report["linear_probe"] = {"top1": probe.accuracy, "C": probe.c, "n_train": probe.n_train, "n_test": probe.n_test,
                              "chance_top1": 1 / len(names)}
    return report
