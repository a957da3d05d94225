"""One optimisation step: forward, loss, backward (optionally gradient-cached over micro-batches), clip, update.

The step computes; the loop (``loop.py``) schedules, logs, evaluates and checkpoints. Accumulation over
micro-batches keeps every negative (``accum.py``: gradient caching).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cliplab.precision import autocast
from cliplab.train.accum import LossFn

__all__ = ["train_step", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        inner = getattr(model, "module", None)  # DDP; compared with None: a module's truth value may need len()
        model = inner if inner is not None else model._orig_mod
    return model


def train_step(model: nn.Module, images: torch.Tensor, texts: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: LossFn, *, accum_steps: int = 1, device: torch.device, precision: str = "fp32",
               scaler: torch.amp.GradScaler | None = None, grad_clip_norm: float | None = None) -> dict[str, float]:
    """Run one update; returns ``{"loss", "grad_norm", "skipped"}``. A loss that is not finite raises (no
    update then), except with an fp16 ``scaler``, which skips that update as it does one whose gradients
    overflow (``skipped``: True)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)

    def amp() -> contextlib.AbstractContextManager:
        return autocast(device, precision)

    if accum_steps > 1:
        from cliplab.train.accum import cached_accumulation_step

        def embed(i: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(i, t)  # through the (DDP) wrapper's forward, so gradients are synchronised
            return out.image_embeds, out.text_embeds

        micro = list(zip(images.chunk(accum_steps), texts.chunk(accum_steps), strict=True))
        loss = cached_accumulation_step(model, micro, loss_fn, amp=amp, embed=embed,
                                        max_logit_scale=unwrap(model).cfg.max_logit_scale,
                                        scale_loss=None if scaler is None else scaler.scale)
    else:
        with amp():
            out = model(images, texts)
        loss = loss_fn(out.image_embeds.float(), out.text_embeds.float(), out.logit_scale.float(),
                       None if out.logit_bias is None else out.logit_bias.float())
        if scaler is not None:  # fp16: a forward that overflowed gives non-finite gradients, so the scaler
            scaler.scale(loss).backward()  # skips the update on every rank (DDP's all-reduce runs on each)
        elif torch.isfinite(loss):
            loss.backward()
    if not torch.isfinite(loss) and scaler is None:
        raise FloatingPointError(f"loss is {loss.item()}")
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])) if params else torch.zeros(())
    skipped = False
    if scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)  # skipped when a gradient overflowed
        scaler.update()
        skipped = scaler.get_scale() < before
    else:
        optimizer.step()
    unwrap(model).clamp_logit_scale()
    return {"loss": float(loss.detach()), "grad_norm": float(norm), "skipped": skipped}
