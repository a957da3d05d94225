"""The small public API: list, create and load models, and classify images with words."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cliplab.config import CLIPConfig, ModelConfig, arch_names, load_arch
from cliplab.errors import CliplabError
from cliplab.model.build import count_parameters
from cliplab.model.build import create_model as _build
from cliplab.model.clip import CLIP

__all__ = ["classify", "create_model", "list_models", "load", "load_model", "resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CliplabError(f"device {device!r}: not a device name (cpu, cuda, cuda:1, auto, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliplabError(f"device {device} requested but CUDA is not available")
    return device


def list_models() -> list[dict[str, Any]]:
    """Every shipped architecture with its size, tower types and input size (computed without memory)."""
    rows = []
    for name in arch_names():
        cfg = load_arch(name)
        with torch.device("meta"):
            model = _build(cfg)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "vision": cfg.vision.type,
                "text": cfg.text.type,
                "image_size": cfg.vision.image_size,
                "embed_dim": cfg.embed_dim,
                "context_length": cfg.text.context_length,
                "pretrained": _pretrained_tags(name),
            }
        )
    return rows


def _pretrained_tags(name: str) -> list[str]:
    from cliplab import weights

    return weights.pretrained_tags(name)


def create_model(arch: str | ModelConfig, device: str | torch.device | None = "cpu") -> CLIP:
    """A randomly initialised model for a shipped architecture name, a JSON path or a config."""
    cfg = arch if isinstance(arch, ModelConfig) else load_arch(arch)
    return _build(cfg).to(resolve_device(device))


def _read_any(path: Path, allow_unsafe: bool, arch: ModelConfig | None = None,
              activation: str | None = None) -> tuple[CLIPConfig, dict[str, torch.Tensor], Path | None]:
    """(config, state dict, folder that holds side files such as a learned tokenizer)."""
    from cliplab import checkpoint

    if path.is_dir() and not checkpoint.is_native(path):
        from cliplab.train.state import resolve_run_dir

        run_ckpt = resolve_run_dir(path)
        if run_ckpt is not None:
            path = run_ckpt
    if checkpoint.is_native(path):
        if arch is not None or activation is not None:
            raise CliplabError(f"{path}: a cliplab checkpoint records its architecture and activation; arch= and "
                               "activation= are for bare OpenAI / open_clip state dicts")
        cfg, sd = checkpoint.load_checkpoint(path)
        return cfg, sd, path if path.is_dir() else path.parent
    from cliplab.convert import load_foreign

    cfg, sd = load_foreign(path, allow_unsafe=allow_unsafe, activation=activation, arch=arch)
    return cfg, sd, None


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = "cpu",
    pretrained: str | None = None,
    allow_unsafe: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    arch: ModelConfig | None = None,
    activation: str | None = None,
) -> tuple[CLIP, CLIPConfig, Path | None]:
    """Load weights from a native checkpoint (file or folder), a training run folder (its latest
    checkpoint), an OpenAI / open_clip / Hugging Face checkpoint, or a known name + pretrained tag.
    For a bare OpenAI / open_clip state dict, ``arch`` overrides the architecture inferred from its shapes
    and ``activation`` (``"quick_gelu"``, OpenAI's and the default; ``"gelu"``, open_clip's own models)
    sets what the file cannot tell.

    Returns ``(model in eval mode with float32 parameters, resolved config, folder of side files or None)``;
    half-precision files (OpenAI's releases are fp16) are widened, as OpenAI's ``clip.load`` does on CPU;
    use ``torch.autocast`` (or ``model.half()`` on CUDA) for low-precision inference.
    """
    device = resolve_device(device)
    path = Path(name_or_path)
    if not path.exists():
        name = str(name_or_path)
        if name not in arch_names():
            raise CliplabError(f"{name}: no such file, folder or architecture (known: {', '.join(arch_names())})")
        from cliplab import weights

        path = weights.download(name, pretrained, cache_dir=cache_dir)
    cfg, sd, root = _read_any(path, allow_unsafe, arch, activation)
    with torch.device("meta"):
        model = _build(cfg.model)
    counters = {k for k, v in model.state_dict().items() if not v.is_floating_point()}  # BatchNorm's
    for key, value in sd.items():  # in place: each source tensor is freed as its copy is made
        if key in counters and value.is_floating_point():  # a state dict cast to half wholesale
            value = value.round().long()
        sd[key] = _owned(value)
    model.load_state_dict(sd, assign=True)
    model = model.to(device).eval()
    model.loaded_from = (cfg, root)  # lets classify() find the weights' own preprocessing and tokenizer
    return model, cfg, root


def load(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device | None = "cpu",
    pretrained: str | None = None,
    allow_unsafe: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    arch: str | ModelConfig | None = None,
    activation: str | None = None,
) -> tuple[CLIP, Any, Any]:
    """``model, preprocess, tokenizer = cliplab.load(path_or_name)``.

    ``preprocess`` maps a PIL image to a normalised tensor (3, S, S) with the weights' own statistics;
    ``tokenizer`` maps a list of strings to token ids (N, context_length). ``arch`` (a name, JSON path or
    config) and ``activation`` are for bare OpenAI / open_clip state dicts: see :func:`load_model`.
    """
    if isinstance(arch, str | os.PathLike):
        arch = load_arch(arch)
    model, _, _ = load_model(name_or_path, device, pretrained, allow_unsafe, cache_dir, arch, activation)
    return (model, *model_io(model))


def model_io(model: CLIP) -> tuple[Any, Any]:
    """``(preprocess, tokenizer)`` of the checkpoint ``model`` was loaded from; for a model made with
    :func:`create_model`, OpenAI's statistics at its input size and OpenAI's tokenizer."""
    from cliplab.tokenizer import get_tokenizer
    from cliplab.transforms import Preprocess

    cfg, root = getattr(model, "loaded_from", (CLIPConfig.for_model(model.cfg), None))
    return Preprocess(cfg.preprocess), get_tokenizer(cfg.tokenizer, root=root)


@torch.no_grad()
def classify(
    images: Any,
    labels: Sequence[str],
    model: CLIP,
    preprocess: Any = None,
    tokenizer: Any = None,
    templates: Sequence[str] | str = "a photo of a {}.",
    top_k: int | None = None,
) -> list[list[dict[str, Any]]]:
    """Zero-shot classification: for each image, ``[{"label", "score"}, ...]`` sorted by probability.

    ``images`` are PIL images, file paths, uint8 arrays, preprocessed tensors (3, S, S) or one tensor
    (N, 3, S, S); a single image of any of these kinds is one row of results. ``templates`` is one template,
    a list (ensembled), or a built-in template-set name such as ``"openai-imagenet"``. Without
    ``preprocess`` or ``tokenizer``, those of the checkpoint the model was loaded from are used (for a model
    made with ``create_model``: OpenAI's statistics and tokenizer). The model runs in eval mode (its mode is
    restored afterwards) and the images are cast to its parameters' device and dtype.
    """
    from cliplab.eval.zeroshot import zero_shot_classifier

    if isinstance(labels, str):
        raise CliplabError(f"classify: labels must be a list of strings, not the string {labels!r}")
    labels = list(labels)  # a generator too
    if not labels:
        raise CliplabError("classify: no candidate labels given")
    if top_k is not None and top_k < 1:
        raise CliplabError(f"classify: top_k must be at least 1, got {top_k}")
    own_preprocess, own_tokenizer = model_io(model)
    preprocess, tokenizer = preprocess or own_preprocess, tokenizer or own_tokenizer
    if len(set(labels)) < len(labels):
        twice = next(label for i, label in enumerate(labels) if label in labels[:i])
        raise CliplabError(f"classify: label {twice!r} is given more than once (its probability would be split)")
    images = _image_list(images)
    if len(images) == 0:
        return []
    if isinstance(templates, str) and ("{}" in templates or "{0}" in templates):
        templates = [templates]
    param = next(model.parameters())
    pixels = torch.stack(_pixels(images, preprocess, model.image_size)).to(param.device)  # (N, 3, S, S)
    modes = {m: m.training for m in model.modules()}  # each restored as it was (a tower may be frozen in eval)
    model.eval()  # BatchNorm on running statistics, no dropout: an image's scores do not depend on its batch
    try:
        classifier = zero_shot_classifier(model, tokenizer, labels, templates, device=param.device)  # (D, C)
        feats = model.encode_image(pixels, normalize=True).float()  # (N, D)
        probs = (model.scale().float() * feats @ classifier.float()).softmax(dim=-1)  # (N, C)
    finally:
        for m, training in modes.items():
            m.training = training
    k = len(labels) if top_k is None else min(top_k, len(labels))
    scores, idx = probs.topk(k, dim=-1)
    return [
        [{"label": labels[j], "score": float(s)} for s, j in zip(row_s.tolist(), row_i.tolist(), strict=True)]
        for row_s, row_i in zip(scores, idx, strict=True)
    ]


def _pixels(images: list[Any], preprocess: Any, size: int) -> list[torch.Tensor]:
    """Each image as the model's input (3, S, S), or a one-line error naming the first that is not."""
    from cliplab.transforms import as_pixels

    out = []
    for i, im in enumerate(images):
        x = as_pixels(im, preprocess, f"classify: image {i}")
        if tuple(x.shape) != (3, size, size):
            raise CliplabError(f"classify: image {i} has shape {tuple(x.shape)}; the model takes (3, {size}, {size}) "
                               "(preprocess images with the model's own preprocess)")
        out.append(x)
    return out


def _image_list(images: Any) -> list[Any]:
    """``classify``'s images as a list: one image (PIL, path, array, (3, S, S) tensor) becomes a list of one."""
    import numpy as np
    from PIL import Image

    if isinstance(images, str | os.PathLike | Image.Image):
        return [images]
    if torch.is_tensor(images) or isinstance(images, np.ndarray):
        kind = "tensor" if torch.is_tensor(images) else "array"
        n_dims = {"tensor": (3, 4), "array": (2, 3, 4)}[kind]
        if images.ndim not in n_dims:
            raise CliplabError(f"classify: a {kind} of images must have {' or '.join(map(str, n_dims))} dimensions, "
                               f"got shape {tuple(images.shape)}")
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t`` (floats widened to fp32) in memory of its own, 64-byte aligned, as a freshly made model's
    parameters are. Tensors read from a safetensors file sit at its byte offsets, and MKL rounds differently
    at other alignments: a model must compute the same however its weights were loaded (a resumed run is
    read from its checkpoint, the run it resumes from was not)."""
    dtype = torch.float32 if t.is_floating_point() else t.dtype
    if t.dtype == dtype and t.is_contiguous() and t.data_ptr() % 64 == 0 and t.untyped_storage().nbytes() == t.nbytes:
        return t
    return t.to(dtype, copy=True).contiguous()
