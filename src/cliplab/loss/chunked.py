"""Memory-efficient contrastive cross-entropy: the similarity matrix is never stored.

The forward pass walks the logits tile by tile and keeps running log-sum-exps of every row (and column): O(N)
state. The backward pass recomputes each tile and accumulates the gradients of both embeddings and of the
temperature (the recompute-in-backward idea of Inf-CL). Memory grows linearly in the batch.

Per tile the work is one matrix product plus a few in-place passes:

* forward: ``l = s·q@kᵀ``; shift rows by their max; one ``exp``; row sums by ``mv``; column sums by a second
  ``mv`` weighted by ``exp(rowmax - tilemax)`` (so one ``exp`` serves both directions);
* backward: ``G = P + Q`` (row and column softmax) from ONE ``exp`` of ``l - M`` times per-row and per-column
  factors ``exp(M - R_i)``, ``exp(M - C_j)``; the row shift is folded into the GEMM (``addmm``).

Sharing one ``exp`` between both directions is exact unless a row/column sits ~60 nats below the rest of its
tile (possible at large temperatures); such rows/columns are detected and recomputed exactly.

The loss is invariant to a constant logit bias (softmax is shift-invariant), so the bias gradient is zero.
"""

from __future__ import annotations

import math

import torch

__all__ = ["chunked_clip_loss", "chunked_cross_entropy"]

# A row/column whose values sit more than _SPREAD nats below the shared shift of its tile is recomputed exactly:
# flushed-to-zero terms (< 1.2e-38 each) then stay far below fp32 precision of the sums they belong to.
_SPREAD = 60.0


def _tiles(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _view(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous (rows, cols) view of the front of a flat work buffer."""
    return buf[: rows * cols].view(rows, cols)  # (rows, cols)


def _dot_sum(a: torch.Tensor, b: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``(a * b).sum()`` for (n, D) tensors without an (n, D) temporary."""
    total = a.new_zeros(())
    for rs in _tiles(a.shape[0], rows):
        total += (a[rs] * b[rs]).sum()
    return total


def _lse_pass(q: torch.Tensor, k: torch.Tensor, s: float, chunk: int, cols: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row (and column) log-sum-exps of ``s·q@kᵀ``, tile by tile: (n,) and (m,)."""
    n, m = q.shape[0], k.shape[0]
    row_lse = q.new_full((n,), -math.inf)
    col_lse = q.new_full((m,), -math.inf) if cols else None
    buf = q.new_empty(min(chunk, n) * min(chunk, m))
    for rs in _tiles(n, chunk):
        qs = q[rs] * s  # (r, D) scaled queries
        for cs in _tiles(m, chunk):
            kt = k[cs]  # (c, D)
            logits = torch.mm(qs, kt.T, out=_view(buf, qs.shape[0], kt.shape[0]))  # (r, c)
            row_max = logits.amax(dim=1)  # (r,)
            e = logits.sub_(row_max[:, None]).exp_()  # (r, c) exp(l - a_i) ≤ 1, in place
            row_tile = torch.mv(e, e.new_ones(e.shape[1])).log_().add_(row_max)  # (r,)
            torch.logaddexp(row_lse[rs], row_tile, out=row_lse[rs])
            if col_lse is None:
                continue
            top = row_max.max()
            col_sum = torch.mv(e.T, (row_max - top).exp_())  # (c,) Σ_i exp(l_ij - top)
            bad = col_sum < math.exp(-_SPREAD)
            col_tile = col_sum.log_().add_(top)  # (c,)
            if bad.any():
                idx = bad.nonzero().squeeze(1)
                col_tile[idx] = torch.mm(qs, kt[idx].T).logsumexp(dim=0)  # exact for the far-off columns
            torch.logaddexp(col_lse[cs], col_tile, out=col_lse[cs])
    return row_lse, col_lse


def _grad_pass(q: torch.Tensor, k: torch.Tensor, s: float, row_lse: torch.Tensor, col_lse: torch.Tensor | None,
               chunk: int, need_k: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``G@k`` and ``Gᵀ@q`` for ``G = softmax_rows(l) (+ softmax_cols(l))``, recomputing every tile."""
    n, m = q.shape[0], k.shape[0]
    gq = torch.zeros_like(q)
    gk = torch.zeros_like(k) if need_k else None
    buf_a = q.new_empty(min(chunk, n) * min(chunk, m))
    buf_b = q.new_empty(buf_a.shape[0]) if col_lse is not None else None
    for rs in _tiles(n, chunk):
        qs = q[rs] * s  # (r, D)
        r_lse = row_lse[rs]  # (r,)
        for cs in _tiles(m, chunk):
            kt = k[cs]  # (c, D)
            r, c = qs.shape[0], kt.shape[0]
            if col_lse is None:  # row softmax only: fold -R_i into the GEMM, then one exp
                g = torch.addmm(-r_lse[:, None].expand(r, c), qs, kt.T, out=_view(buf_a, r, c)).exp_()  # (r, c)
            else:
                g = _both_softmaxes(qs, kt, r_lse, col_lse[cs], _view(buf_a, r, c), _view(buf_b, r, c))
            gq[rs].addmm_(g, kt)
            if gk is not None:
                gk[cs].addmm_(g.T, q[rs])
    return gq, gk


def _both_softmaxes(qs: torch.Tensor, kt: torch.Tensor, r_lse: torch.Tensor, c_lse: torch.Tensor,
                    a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``exp(l - R_i) + exp(l - C_j)`` for one tile with a single ``exp``; far-off rows/columns done exactly."""
    shift = torch.minimum(r_lse.max(), c_lse.max())  # ≥ every logit of the tile, so exp(l - shift) ≤ 1
    e = torch.addmm(-shift, qs, kt.T, out=a).exp_()  # (r, c)
    u, v = shift - r_lse, shift - c_lse  # (r,), (c,)
    bad_r, bad_c = u > _SPREAD, v > _SPREAD
    u = u.exp_().masked_fill_(bad_r, 0.0)
    v = v.exp_().masked_fill_(bad_c, 0.0)
    torch.mul(e, u[:, None], out=out).addcmul_(e, v[None, :])  # (r, c)
    if bad_r.any():
        idx = bad_r.nonzero().squeeze(1)
        out.index_add_(0, idx, torch.mm(qs[idx], kt.T).sub_(r_lse[idx, None]).exp_())
    if bad_c.any():
        idx = bad_c.nonzero().squeeze(1)
        out.index_add_(1, idx, torch.mm(qs, kt[idx].T).sub_(c_lse[None, idx]).exp_())
    return out


class _TiledCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``s·q@kᵀ`` rows (labels ``i + offset``), plus the columns when ``symmetric``."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                offset: int, symmetric: bool, chunk: int) -> torch.Tensor:
        s = float(scale.detach())
        n = q.shape[0]
        with torch.autocast(q.device.type, enabled=False):  # the tiles stay in the inputs' precision
            row_lse, col_lse = _lse_pass(q, k, s, chunk, cols=symmetric)
        pos = _dot_sum(q, k[offset : offset + n])  # Σ_i q_i·k_(i+offset), unscaled
        if symmetric:
            loss = (row_lse.sum() + col_lse.sum()) / (2 * n) - s * pos / n
        else:
            loss = row_lse.sum() / n - s * pos / n
        ctx.save_for_backward(q, k, scale, row_lse, col_lse if symmetric else row_lse[:0])
        ctx.offset, ctx.symmetric, ctx.chunk, ctx.has_bias = offset, symmetric, chunk, bias is not None
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, scale, row_lse, col_lse = ctx.saved_tensors
        s, n, off = float(scale.detach()), q.shape[0], ctx.offset
        need_k = ctx.needs_input_grad[1]
        with torch.autocast(q.device.type, enabled=False):
            gq, gk = _grad_pass(q, k, s, row_lse, col_lse if ctx.symmetric else None, ctx.chunk, need_k)
        w = 1.0 / (2 * n) if ctx.symmetric else 1.0 / n  # weight of each softmax entry
        gq.mul_(w)
        k_pos = k[off : off + n]  # (n, D) the positives; each pair's logit carries weight -1/n
        g_scale = _dot_sum(q, gq) - _dot_sum(q, k_pos) / n
        gq.sub_(k_pos, alpha=1.0 / n).mul_(s * grad_out)
        if gk is not None:
            gk.mul_(w)
            gk[off : off + n].sub_(q, alpha=1.0 / n)
            gk.mul_(s * grad_out)
        g_bias = torch.zeros((), dtype=q.dtype, device=q.device) if ctx.has_bias else None
        return gq, gk, (g_scale * grad_out).to(scale.dtype).reshape(scale.shape), g_bias, None, None, None


def _prepare(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in one float dtype (float32 unless float64), contiguous."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()


def _scale_like(logit_scale: torch.Tensor | float, ref: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(logit_scale, dtype=ref.dtype, device=ref.device)


def chunked_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """:func:`cliplab.loss.clip_loss` computed in ``chunk_size``² tiles with O(N) memory.

    Gradients flow to both embeddings, ``logit_scale`` and ``logit_bias`` (always zero: CE ignores a shift).
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"expected two (N, D) embeddings of one shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    img, txt = _prepare(image_emb, text_emb)
    scale = _scale_like(logit_scale, img)
    return _TiledCrossEntropy.apply(img, txt, scale, logit_bias, 0, True, max(1, int(chunk_size)))


def chunked_cross_entropy(
    queries: torch.Tensor,
    keys: torch.Tensor,
    logit_scale: torch.Tensor,
    offset: int = 0,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Mean over rows of ``CE(s·queries@keysᵀ, label = row + offset)`` with O(n + m) memory.

    The one-directional half of the CLIP loss; ``distributed`` uses it for a rank's rows against all columns.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"expected (n, D) and (m, D), got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if not 0 <= offset <= keys.shape[0] - queries.shape[0]:
        raise ValueError(f"offset {offset} puts labels outside the {keys.shape[0]} keys")
    q, k = _prepare(queries, keys)
    scale = _scale_like(logit_scale, q)
    return _TiledCrossEntropy.apply(q, k, scale, None, int(offset), False, max(1, int(chunk_size)))
