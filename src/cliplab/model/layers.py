"""Transformer building blocks shared by the vision and text towers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cliplab.model.cpu_inference import inference_path
from cliplab.model.hooks import hooks_active

__all__ = ["MLP", "Attention", "Block", "QuickGELU", "Transformer", "activation"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        return self.out(self.attend(self.qkv(x), causal))

    def attend(self, qkv: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """(B, T, 3C) projected queries, keys and values → (B, T, C) attention output, before ``out``."""
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, nh, T, hs)
        y = _attention(q, k, v, causal=causal)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)

    def forward_row(self, x: torch.Tensor, row: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Attention output at one position per sample, ``row`` (B,), from keys and values at every position
        (only those up to ``row`` if ``causal``): equal to ``forward(x)[arange(B), row]`` at a 1/T of the
        query and output projection cost. Returns (B, C)."""
        B, T, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias  # (3C, C), (3C,): rows are q, then k, then v
        q = F.linear(x[torch.arange(B, device=x.device), row], w[:C], b[:C])  # (B, C)
        q = q.view(B, self.heads, 1, C // self.heads)  # (B, nh, 1, hs)
        kv = F.linear(x, w[C:], b[C:]).view(B, T, 2, self.heads, C // self.heads)  # (B, T, 2, nh, hs)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 × (B, nh, T, hs)
        mask = None
        if causal:
            mask = torch.arange(T, device=x.device) <= row[:, None]  # (B, T): keys at or before the row
            mask = mask[:, None, None, :]  # (B, 1, 1, T)
        y = _attention(q, k, v, mask=mask)  # (B, nh, 1, hs)
        return self.out(y.reshape(B, C))  # (B, C)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √hs) v: q (B, nh, Tq, hs), k and v (B, nh, Tk, hs); ``mask`` broadcasts to (B, nh, Tq, Tk),
    True where a query may attend. Returns (B, nh, Tq, hs)."""
    if _explicit_is_faster(q, k):
        return _explicit_attention(q, k, v, causal, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def _explicit_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Training on CPU with short sequences. There, SDPA's kernels lose to plain matmul-softmax-matmul under
    autograd. Measured forward + backward at T = 20-77: its flash kernel was 1.3x slower in fp32 and 4-6x
    slower in bf16, and its math kernel 1.7-3x slower in bf16. Without autograd, SDPA's flash forward is the
    faster one (2.4 vs 2.9 ms at ViT-B/32, batch 32, bf16), so inference keeps it."""
    return (q.device.type == "cpu" and k.shape[-2] <= 128 and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad) and not (_exporting() or torch.compiler.is_compiling()))


def _traced() -> bool:
    """Under export or torch.compile, which trace a graph of their own: no in-place writes of ours."""
    return _exporting() or torch.compiler.is_compiling()


def _exporting() -> bool:
    """Inside a TorchScript trace or an ONNX export, which want the plain, out-of-place graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """Scores and softmax in at least fp32 (whatever the input precision), then the weighted sum in v's."""
    acc = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        s = torch.matmul(q.to(acc) * q.shape[-1] ** -0.5, k.to(acc).transpose(-1, -2))  # (B, nh, Tq, Tk)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(s.softmax(dim=-1).to(v.dtype), v)  # (B, nh, Tq, hs)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = activation(act)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, plain: bool = False) -> torch.Tensor:
        """``plain``: the activation out of place, a call of ``act`` (see :func:`plain_forward`)."""
        h = self.fc(x)  # (..., hidden)
        if plain or (torch.is_grad_enabled() and h.requires_grad) or _traced():
            return self.proj(self.act(h))
        return self.proj(_activate_inplace(self.act, h))


def _activate_inplace(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Inference: the activation written over ``h`` (no new (tokens × hidden) buffer, the largest in a block).
    QuickGELU ``h·σ(1.702h)`` runs as ``silu(1.702h) / 1.702``: three passes, no temporary."""
    if isinstance(act, QuickGELU):
        return F.silu(h.mul_(1.702), inplace=True).mul_(1 / 1.702)
    if isinstance(act, nn.GELU):
        return torch.ops.aten.gelu_(h, approximate=act.approximate)
    return act(h)


class Block(nn.Module):
    """Pre-LN residual block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, round(width * mlp_ratio), act)  # round: 56 * (115 / 56) is 114.99...

    def forward(self, x: torch.Tensor, causal: bool = False, workspace: dict | None = None,
                plain: bool | None = None) -> torch.Tensor:
        """``workspace``: buffers that the CPU inference path may reuse across the blocks of one stack (the
        output may then live in one of them, so pass a dict only where the next block consumes the output).
        ``plain``: run as a plain PyTorch block (see :func:`plain_forward`); None: decide here."""
        if plain is None:
            plain = plain_forward(self, x)
        fast = None if plain else inference_path(self, x)
        if fast is not None:
            return fast(self, x, causal, workspace)
        x = _residual(x, self.attn(self.ln_1(x), causal=causal), plain)
        return _residual(x, self.mlp(self.ln_2(x), plain=plain), plain)

    def forward_row(self, x: torch.Tensor, row: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``forward(x)[arange(B), row]`` (B, C) without computing the other positions' outputs."""
        y = x[torch.arange(x.shape[0], device=x.device), row]  # (B, C)
        y = _residual(y, self.attn.forward_row(self.ln_1(x), row, causal=causal))
        return _residual(y, self.mlp(self.ln_2(y)))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_onednn_weights", None)  # a cache of opaque oneDNN tensors: copies and pickles pack again
        return state


def _residual(x: torch.Tensor, branch: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """``x + branch``, written into the branch's fresh output when the dtypes agree (no new allocation; autograd
    keeps no GEMM output), unless ``plain`` (a hook may hold that output) or traced (a compiled graph would keep
    the write under hooks too; inductor writes in place where it may on its own). Under autocast the branch is
    low precision and the sum stays in x's."""
    if plain or branch.dtype != x.dtype or branch.shape != x.shape or _traced():
        return x + branch
    return branch.add_(x)


def plain_forward(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` must run as a plain PyTorch model: forward hooks watch it (they must see every
    sub-module called, with outputs that nothing writes over afterwards) or ``x`` is wrapped by ``torch.func``
    (``vmap`` has no batching rule for ``out=`` or in-place activations). Not under torch.compile or export,
    which trace their own graph."""
    if torch.compiler.is_compiling():
        return False
    return (torch._C._functorch.is_functorch_wrapped_tensor(x) or hooks_active(module)) and not _exporting()


class Transformer(nn.Module):
    """A stack of pre-LN blocks with optional gradient checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, eps: float) -> None:
        super().__init__()
        self.width = width
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, act, eps) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False, row: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) → (B, T, C); with ``row`` (B,), only the output at that position of each sample, (B, C):
        the last block then skips the query, output projection and MLP of every other position (exact), unless
        hooks watch the stack (see :func:`plain_forward`)."""
        plain = plain_forward(self, x)
        workspace = None if plain else {}  # buffers the blocks' inference path reuses; the last output may live in one
        for i, block in enumerate(self.blocks):
            if row is not None and i == len(self.blocks) - 1 and not plain:
                fn, args, kwargs = block.forward_row, (x, row, causal), {}
            else:
                fn, args, kwargs = block, (x, causal, workspace), {"plain": plain}
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(fn, *args, use_reentrant=False, **kwargs)
            else:
                x = fn(*args, **kwargs)
        if row is not None and plain:
            x = x[torch.arange(x.shape[0], device=x.device), row]  # (B, C)
        return x

    def init_weights(self) -> None:
        """OpenAI's initialisation: std scaled by width and depth."""
        n = len(self.blocks)
        proj_std = self.width**-0.5 * (2 * n) ** -0.5
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=attn_std)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.out.weight, std=proj_std)
            nn.init.zeros_(block.attn.out.bias)
            nn.init.normal_(block.mlp.fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.proj.weight, std=proj_std)
