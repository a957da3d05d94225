"""One optimisation step: forward, loss, backward (optionally gradient-cached over micro-batches), clip, update.

The step computes; the loop (``loop.py``) schedules, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cliplab.errors import CliplabError

__all__ = ["LossFn", "autocast", "cached_accumulation_step", "train_step", "unwrap"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise CliplabError("precision fp16 needs CUDA (on CPU it is ~400x slower); use bf16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def cached_accumulation_step(model: nn.Module, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                             loss_fn: LossFn, amp: Callable[[], Any] = contextlib.nullcontext) -> torch.Tensor:
    """GradCache: the gradient of one contrastive batch of all micro-batches together, in the memory of one.

    1. embed every micro-batch without a graph; 2. compute the loss on all embeddings and its gradient with
    respect to them (and to the temperature/bias); 3. re-embed each micro-batch with a graph and push the
    cached gradient through it. Calls ``backward`` itself; returns the (detached) loss.
    """
    with torch.no_grad(), amp():
        outs = [model(images, texts) for images, texts in micro_batches]
    img = torch.cat([o.image_embeds for o in outs]).float().requires_grad_()
    txt = torch.cat([o.text_embeds for o in outs]).float().requires_grad_()
    scale = outs[0].logit_scale.detach().float().requires_grad_()
    bias = None if outs[0].logit_bias is None else outs[0].logit_bias.detach().float().requires_grad_()
    loss = loss_fn(img, txt, scale, bias)
    leaves = [img, txt, scale] + ([bias] if bias is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    g_img, g_txt, g_scale = grads[0], grads[1], grads[2]
    g_bias = grads[3] if bias is not None else None
    start = 0
    for k, (images, texts) in enumerate(micro_batches):
        n = images.shape[0]
        sync = contextlib.nullcontext() if k == len(micro_batches) - 1 or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with amp():
                out = model(images, texts)
            surrogate = (out.image_embeds.float() * g_img[start : start + n]).sum() \
                + (out.text_embeds.float() * g_txt[start : start + n]).sum()
            if k == 0:  # the temperature's gradient, once
                surrogate = surrogate + out.logit_scale.float() * g_scale
                if g_bias is not None:
                    surrogate = surrogate + out.logit_bias.float() * g_bias
            surrogate.backward()
        start += n
    return loss.detach()


def train_step(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: LossFn, *, accum_steps: int = 1, device: torch.device, precision: str = "fp32",
               scaler: torch.amp.GradScaler | None = None, grad_clip_norm: float | None = None) -> dict[str, float]:
    """Run one update; returns ``{"loss", "grad_norm"}``. Raises if the loss is not finite (no update then)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)

    def amp() -> contextlib.AbstractContextManager:
        return autocast(device, precision)

    if accum_steps > 1:
        micro = list(zip(images.chunk(accum_steps), texts.chunk(accum_steps), strict=True))
        loss = cached_accumulation_step(model, micro, loss_fn, amp)
    else:
        with amp():
            out = model(images, texts)
        loss = loss_fn(out.image_embeds.float(), out.text_embeds.float(), out.logit_scale.float(),
                       None if out.logit_bias is None else out.logit_bias.float())
        if torch.isfinite(loss):
            (scaler.scale(loss) if scaler is not None else loss).backward()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()}")
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) if params else torch.zeros(())
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    unwrap(model).clamp_logit_scale()
    return {"loss": float(loss.detach()), "grad_norm": float(norm)}
