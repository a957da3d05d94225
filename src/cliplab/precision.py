"""Numeric precision: the autocast context for a ``--precision`` name, and whether the CPU has native bf16."""

from __future__ import annotations

import contextlib

import torch

from cliplab.errors import CliplabError

__all__ = ["PRECISIONS", "autocast", "cpu_has_bf16", "cuda_has_bf16"]

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``fp32`` → no autocast; ``bf16`` on CPU or CUDA; ``fp16`` on CUDA only (on CPU it is ~400× slower)."""
    if precision not in PRECISIONS:
        raise CliplabError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise CliplabError("precision fp16 needs CUDA (on CPU it is ~400x slower); use bf16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def cpu_has_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512 BF16 or AMX); elsewhere bf16 is emulated, slower."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cuda_has_bf16() -> bool:
    """True on GPUs with bf16 tensor cores (Ampere on); older ones (V100, T4) only emulate it, slowly."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
