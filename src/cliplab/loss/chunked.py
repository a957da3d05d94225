"""Memory-efficient CLIP loss: the N×N similarity matrix is never stored.

The forward pass walks the matrix tile by tile, keeping running log-sum-exps of every row and column
(O(N) memory); the backward pass recomputes each tile and accumulates the gradients of both embeddings
and of the temperature (as Inf-CL does). Memory grows linearly in the batch, so a contrastive batch of
65k pairs fits where the naive loss would need tens of GiB. Equal to :func:`clip_loss` up to float
rounding (tested forward and backward).
"""

from __future__ import annotations

import torch

__all__ = ["chunked_clip_loss"]


def _tiles(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _ChunkedCLIPLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                chunk: int) -> torch.Tensor:
        n = img.shape[0]
        row_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=img.device)
        col_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=img.device)
        for rows in _tiles(n, chunk):
            for cols in _tiles(n, chunk):
                logits = (img[rows] @ txt[cols].T).float().mul_(scale).add_(bias)  # (r, c)
                torch.logaddexp(row_lse[rows], logits.logsumexp(dim=1), out=row_lse[rows])
                torch.logaddexp(col_lse[cols], logits.logsumexp(dim=0), out=col_lse[cols])
        diag = scale * (img * txt).sum(dim=1).float() + bias  # (N,)
        ctx.save_for_backward(img, txt, scale, bias, row_lse, col_lse)
        ctx.chunk = chunk
        return (row_lse.sum() + col_lse.sum() - 2 * diag.sum()) / (2 * n)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        img, txt, scale, bias, row_lse, col_lse = ctx.saved_tensors
        n = img.shape[0]
        g_img, g_txt = torch.zeros_like(img), torch.zeros_like(txt)
        g_scale = torch.zeros((), dtype=torch.float32, device=img.device)
        g_bias = torch.zeros((), dtype=torch.float32, device=img.device)
        for rows in _tiles(n, ctx.chunk):
            for cols in _tiles(n, ctx.chunk):
                dots = img[rows] @ txt[cols].T  # (r, c)
                logits = dots.float() * scale + bias
                # dL/dlogits without the diagonal term: (softmax over the row + softmax over the column) / 2N
                p_row = (logits - row_lse[rows, None]).exp_()
                grad = (logits - col_lse[None, cols]).exp_().add_(p_row).div_(2 * n)  # (r, c)
                g_scale += (grad * dots).sum()
                g_bias += grad.sum()
                grad = grad.to(img.dtype)
                g_img[rows] += grad @ txt[cols]
                g_txt[cols] += grad.T @ img[rows]
        # the diagonal (matching pairs): d(-2 diag.sum() / 2N) = -1/N per pair
        g_img = (g_img - txt / n) * scale
        g_txt = (g_txt - img / n) * scale
        g_scale = g_scale - (img * txt).sum() / n
        g_bias = g_bias - 1.0
        return (g_img * grad_out, g_txt * grad_out, (g_scale * grad_out).to(scale.dtype),
                (g_bias * grad_out).to(bias.dtype), None)


def chunked_clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """:func:`cliplab.loss.clip_loss` computed in ``chunk_size``² tiles with O(N) memory."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings differ in shape: {image_emb.shape} vs {text_emb.shape}")
    scale = torch.as_tensor(logit_scale, dtype=image_emb.dtype, device=image_emb.device)
    bias = torch.zeros((), dtype=image_emb.dtype, device=image_emb.device) if logit_bias is None else logit_bias
    return _ChunkedCLIPLoss.apply(image_emb, text_emb, scale, bias, max(1, int(chunk_size)))
