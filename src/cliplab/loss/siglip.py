"""SigLIP's pairwise sigmoid loss as a pure function (Zhai et al., 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cliplab.loss.chunked import _dot_sum, _prepare, _tiles, _view

__all__ = ["chunked_siglip_loss", "siglip_loss"]


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    offset: int = 0,
) -> torch.Tensor:
    """``-Σ_ij log σ(z_ij (s x_i·y_j + b)) / n`` with z = +1 for the pair (i, i + offset), −1 elsewhere.

    ``image_emb`` is (n, D), ``text_emb`` (m, D) with m ≥ n + offset; ``offset`` lets one rank score its own
    images against every rank's texts. Normalised by the number of images n.
    """
    if logit_bias is None:
        raise ValueError("the SigLIP loss needs a logit bias (build the model with init_logit_bias)")
    n, m = image_emb.shape[0], text_emb.shape[0]
    if image_emb.ndim != 2 or text_emb.ndim != 2 or not 0 <= offset <= m - n:
        raise ValueError(f"bad shapes for SigLIP: images {tuple(image_emb.shape)}, texts {tuple(text_emb.shape)}, "
                         f"offset {offset}")
    logits = logit_scale * image_emb @ text_emb.T + logit_bias  # (n, m)
    # -log σ(-l) = softplus(l) on every pair; a positive needs -log σ(l) = softplus(l) - l instead
    rows = torch.arange(n, device=logits.device)
    return (F.softplus(logits).sum() - logits[rows, rows + offset].sum()) / n


class _TiledSigLIP(torch.autograd.Function):
    """:func:`siglip_loss` tile by tile: O(n + m) memory, tiles recomputed in the backward pass."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, offset: int,
                chunk: int) -> torch.Tensor:
        s, b, n = float(scale.detach()), bias.to(q.dtype), q.shape[0]
        total = q.new_zeros(())
        buf = q.new_empty(min(chunk, n) * min(chunk, k.shape[0]))
        with torch.autocast(q.device.type, enabled=False):
            for _, _, logits in _tile_logits(q, k, s, b, chunk, buf):
                total += F.softplus(logits).sum()
        pos = s * _dot_sum(q, k[offset : offset + n]) + n * b  # Σ of the positives' logits
        ctx.save_for_backward(q, k, scale, bias)
        ctx.offset, ctx.chunk = offset, chunk
        return (total - pos) / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, scale, bias = ctx.saved_tensors
        s, b, n, off = float(scale.detach()), bias.to(q.dtype), q.shape[0], ctx.offset
        gq, gk = torch.zeros_like(q), torch.zeros_like(k)
        g_bias = q.new_zeros(())
        buf = q.new_empty(min(ctx.chunk, n) * min(ctx.chunk, k.shape[0]))
        with torch.autocast(q.device.type, enabled=False):
            for rs, cs, logits in _tile_logits(q, k, s, b, ctx.chunk, buf):
                g = logits.sigmoid_()  # (r, c) ∂/∂l of softplus(l)
                g_bias += g.sum()
                gq[rs].addmm_(g, k[cs])
                gk[cs].addmm_(g.T, q[rs])
        k_pos = k[off : off + n]  # (n, D)
        g_scale = (_dot_sum(q, gq) - _dot_sum(q, k_pos)) / n
        gq.sub_(k_pos).mul_(s / n * grad_out)
        gk[off : off + n].sub_(q)
        gk.mul_(s / n * grad_out)
        g_bias = (g_bias / n - 1.0) * grad_out
        return gq, gk, (g_scale * grad_out).to(scale.dtype).reshape(scale.shape), \
            g_bias.to(bias.dtype).reshape(bias.shape), None, None


def _tile_logits(q: torch.Tensor, k: torch.Tensor, s: float, b: torch.Tensor, chunk: int, buf: torch.Tensor):
    """Yield ``(rows, cols, s·q[rows]@k[cols]ᵀ + b)`` in a reused buffer."""
    for rs in _tiles(q.shape[0], chunk):
        qs = q[rs] * s  # (r, D)
        for cs in _tiles(k.shape[0], chunk):
            kt = k[cs]  # (c, D)
            yield rs, cs, torch.addmm(b, qs, kt.T, out=_view(buf, qs.shape[0], kt.shape[0]))  # (r, c)


def chunked_siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    offset: int = 0,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """:func:`siglip_loss` in ``chunk_size``² tiles with O(N) memory; same arguments and value."""
    if logit_bias is None:
        raise ValueError("the SigLIP loss needs a logit bias (build the model with init_logit_bias)")
    n, m = image_emb.shape[0], text_emb.shape[0]
    if image_emb.ndim != 2 or text_emb.ndim != 2 or not 0 <= offset <= m - n:
        raise ValueError(f"bad shapes for SigLIP: images {tuple(image_emb.shape)}, texts {tuple(text_emb.shape)}, "
                         f"offset {offset}")
    q, k = _prepare(image_emb, text_emb)
    scale = torch.as_tensor(logit_scale, dtype=q.dtype, device=q.device)
    bias = torch.as_tensor(logit_bias, dtype=q.dtype, device=q.device)
    return _TiledSigLIP.apply(q, k, scale, bias, int(offset), max(1, int(chunk_size)))
