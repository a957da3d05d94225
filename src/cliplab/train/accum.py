"""Gradient-cached accumulation (GradCache): a contrastive batch of K micro-batches in the memory of one.

A contrastive loss couples every pair in the batch, so plain gradient accumulation (one loss per micro-batch)
changes the objective. Instead:

1. embed every micro-batch without a graph;
2. compute the loss on all embeddings together and its gradient w.r.t. the embeddings, temperature and bias;
3. re-embed each micro-batch with a graph and back-propagate ``Σ emb · cached_grad``.

The parameter gradients equal those of one batch of all micro-batches (tested to 1e-5). The random state is
replayed in step 3, so dropout-style randomness matches step 1. Buffers (BatchNorm running statistics) are
restored after step 1, so each micro-batch updates them once, in step 3. A tower with BatchNorm in training
mode normalises each micro-batch with its own statistics, so for it the gradient approximates that of one
batch (as in every accumulation scheme), not equals it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["LossFn", "cached_accumulation_step"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


Embed = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _encoders(model: nn.Module) -> Embed:
    def embed(images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)

    return embed


def cached_accumulation_step(
    model: nn.Module,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: LossFn,
    *,
    max_logit_scale: float = 100.0,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    embed: Embed | None = None,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Accumulate into ``.grad`` the gradient of ``loss_fn`` over all micro-batches at once; return the loss.

    Args:
        model: has ``encode_image(images, normalize=True)``, ``encode_text(tokens, normalize=True)``,
            ``logit_scale`` (the LOG scale, a Parameter) and optionally ``logit_bias`` (Parameter or None).
        micro_batches: ``(images, tokens)`` pairs, sizes may differ.
        loss_fn: ``(image_emb, text_emb, scale, bias) -> loss`` on the concatenated embeddings (float32).
        max_logit_scale: cap of the multiplier ``exp(logit_scale)``.
        amp: factory of the autocast context used around the encoders.
        embed: ``(images, tokens) -> (image_emb, text_emb)`` normalised; default: the model's encoders. Under
            DDP pass one that calls the wrapper's ``forward`` (DDP only synchronises gradients of graphs built
            through it); ``logit_scale``/``logit_bias`` are then read from ``model.module``, and all but the
            last micro-batch run under ``model.no_sync()``.
        scale_loss: applied to each backward's objective, e.g. an fp16 ``GradScaler.scale`` (the gradients then
            carry its factor, as after ``scaler.scale(loss).backward()``).
    """
    if not micro_batches:
        raise ValueError("cached_accumulation_step needs at least one micro-batch")
    core = getattr(model, "module", model)  # the model inside a DDP wrapper
    if embed is None:
        if core is not model:
            raise ValueError("under DDP pass embed= calling the wrapper's forward, or gradients are not synchronised")
        embed = _encoders(model)
    device = core.logit_scale.device
    states, img_parts, txt_parts = [], [], []
    buffers = [(b, b.clone()) for b in core.buffers()]  # step 3 updates running statistics, not step 1 too
    with torch.no_grad():  # 1. embeddings without a graph, remembering each micro-batch's random state
        for images, texts in micro_batches:
            states.append(_rng_state(device))
            with amp():
                img, txt = embed(images, texts)
            img_parts.append(img.float())
            txt_parts.append(txt.float())
        for b, saved in buffers:
            b.copy_(saved)
    after = _rng_state(device)

    # 2. the loss on the whole batch and its gradient w.r.t. the embeddings and the temperature / bias
    img = torch.cat(img_parts).requires_grad_()  # (N, D)
    txt = torch.cat(txt_parts).requires_grad_()  # (N, D)
    bias_param = getattr(core, "logit_bias", None)
    scale = core.logit_scale.detach().float().exp().clamp(max=max_logit_scale).requires_grad_()
    bias = None if bias_param is None else bias_param.detach().float().requires_grad_()
    leaves = [img, txt, scale] + ([bias] if bias is not None else [])
    loss = loss_fn(img, txt, scale, bias)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    g_img, g_txt = (torch.zeros_like(t) if g is None else g for t, g in zip((img, txt), grads[:2], strict=True))

    # 3. re-embed with a graph (same random state) and push the cached gradients through the encoders; the
    # temperature and bias ride along with the last micro-batch (one synchronised backward under DDP)
    start, last = 0, len(micro_batches) - 1
    for k, ((images, texts), state) in enumerate(zip(micro_batches, states, strict=True)):
        _set_rng_state(state, device)
        sync = model.no_sync() if k < last and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            with amp():
                part_img, part_txt = embed(images, texts)
            n = part_img.shape[0]
            surrogate = (part_img.float() * g_img[start : start + n]).sum() \
                + (part_txt.float() * g_txt[start : start + n]).sum()
            if k == last:
                surrogate = surrogate + _temperature_surrogate(core, grads, max_logit_scale)
            (surrogate if scale_loss is None else scale_loss(surrogate)).backward()
        start += n
    _set_rng_state(after, device)
    return loss.detach()


def _temperature_surrogate(core: nn.Module, grads: Sequence[torch.Tensor | None], max_scale: float) -> torch.Tensor:
    """``scale·g_scale (+ bias·g_bias)``: its backward gives the log-scale (through exp and the cap) and bias."""
    total = torch.zeros((), device=core.logit_scale.device)
    if grads[2] is not None and core.logit_scale.requires_grad:
        total = total + core.logit_scale.float().exp().clamp(max=max_scale) * grads[2]
    bias = getattr(core, "logit_bias", None)
    if len(grads) > 3 and grads[3] is not None and bias is not None and bias.requires_grad:
        total = total + bias.float() * grads[3]
    return total
