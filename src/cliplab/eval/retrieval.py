"""Image↔text retrieval Recall@K, mean and median rank, computed in chunks of the similarity matrix.

Scores are dot products: pass L2-normalised embeddings for cosine similarity. Each text belongs to one
image (``text_to_image``); an image may have several texts.

Ranks are 1-based and **pessimistic on ties**: an item's rank is one plus the number of *wrong* candidates
scoring at least as high (``>=``) as the correct one, so a collapsed model whose scores are all equal gets
chance-level recall, never 100 %. For image→text the correct score is the best score among the image's
own captions (an image is retrieved as soon as any of its captions is).

Memory: the (Ni, Nt) matrix is never built; one (chunk_size, chunk_size) block at a time is, and it serves
both directions. The correct scores come first, from the blocks that hold correct pairs.

Exact ties: a float32 matrix product rounds the same dot product differently depending on the block's
shape and where the pair sits in it, so an exact duplicate (image or caption) could score a hair above or
below its twin and the tie would be broken by chance. Blocks are therefore multiplied in float64 and rounded
to float32: equal vectors get equal scores in any block, and the ranks do not depend on ``chunk_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cliplab.errors import CliplabError

__all__ = ["rank_summary", "retrieval_metrics", "retrieval_ranks"]


def _check(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise CliplabError(
            "retrieval: embeddings must be (Ni, D) and (Nt, D); "
            f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    t2i = torch.as_tensor(text_to_image).long().view(-1).to(image_emb.device)
    if t2i.numel() != text_emb.shape[0]:
        raise CliplabError(f"retrieval: {t2i.numel()} text_to_image entries for {text_emb.shape[0]} texts")
    if t2i.numel() and (t2i.min() < 0 or t2i.max() >= image_emb.shape[0]):
        raise CliplabError(f"retrieval: text_to_image refers to an image outside 0..{image_emb.shape[0] - 1}")
    captions = torch.bincount(t2i, minlength=image_emb.shape[0])
    if (captions == 0).any():
        first = int((captions == 0).nonzero()[0])
        raise CliplabError(f"retrieval: image {first} has no text (every image needs at least one)")
    return t2i


@torch.no_grad()
def retrieval_ranks(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks ``(image_to_text (Ni,), text_to_image (Nt,))`` under the pessimistic tie rule."""
    t2i = _check(image_emb, text_emb, text_to_image)
    img, txt = image_emb.float(), text_emb.to(image_emb.device).float()
    ni, nt = img.shape[0], txt.shape[0]
    pos = _own_scores(img, txt, t2i, chunk_size)  # (Nt,) score of each text with its own image
    best = torch.full((ni,), float("-inf"), device=img.device).scatter_reduce(0, t2i, pos, "amax")  # (Ni,)
    i2t_wrong = torch.zeros(ni, dtype=torch.long, device=img.device)
    t2i_wrong = torch.zeros(nt, dtype=torch.long, device=img.device)
    for i0 in range(0, ni, chunk_size):
        i1 = min(i0 + chunk_size, ni)
        for t0 in range(0, nt, chunk_size):
            t1 = min(t0 + chunk_size, nt)
            scores = _block(img[i0:i1], txt[t0:t1])  # (bi, bt)
            i2t_wrong[i0:i1] += (scores >= best[i0:i1, None]).sum(dim=1)
            t2i_wrong[t0:t1] += (scores >= pos[None, t0:t1]).sum(dim=0)
            # the correct pairs inside this block were counted too: take them back out, using the block's
            # own values so that the comparison is the same one made above
            own = t2i[t0:t1]  # (bt,)
            cols = ((own >= i0) & (own < i1)).nonzero().view(-1)  # texts whose image is in this block
            rows = own[cols]  # absolute image index
            vals = scores[rows - i0, cols]  # (k,)
            i2t_wrong.index_add_(0, rows, -(vals >= best[rows]).long())
            t2i_wrong[t0 + cols] -= (vals >= pos[t0 + cols]).long()
    return i2t_wrong + 1, t2i_wrong + 1


def _block(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
    """Scores (bi, bt) of one block, the same float32 value for a pair whatever the block (module docstring)."""
    device = img.device
    if device.type == "mps":  # no float64 there
        img, txt = img.cpu(), txt.cpu()
    return (img.double() @ txt.double().T).float().to(device)


def _own_scores(img: torch.Tensor, txt: torch.Tensor, t2i: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Each text's score with its own image, from the blocks that hold a correct pair (the diagonal ones,
    when rows are grouped by image)."""
    pos = torch.empty(txt.shape[0], device=img.device)  # (Nt,)
    for i0 in range(0, img.shape[0], chunk_size):
        i1 = min(i0 + chunk_size, img.shape[0])
        for t0 in range(0, txt.shape[0], chunk_size):
            t1 = min(t0 + chunk_size, txt.shape[0])
            own = t2i[t0:t1]  # (bt,)
            cols = ((own >= i0) & (own < i1)).nonzero().view(-1)
            if cols.numel():
                scores = _block(img[i0:i1], txt[t0:t1])  # (bi, bt)
                pos[t0 + cols] = scores[own[cols] - i0, cols]
    return pos


def rank_summary(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K (fraction of ranks ≤ K), mean rank and median rank (mean of the two middle ranks if even)."""
    r = ranks.double()
    out = {f"R@{k}": float((r <= k).double().mean()) for k in ks}
    s = r.sort().values
    m = s.numel()
    out["mean_rank"] = float(r.mean())
    out["median_rank"] = float((s[(m - 1) // 2] + s[m // 2]) / 2)
    return out


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Flat dict: ``image_to_text_R@K``, ``image_to_text_mean_rank``, ``image_to_text_median_rank``, the same
    for ``text_to_image_*``, ``mean_recall`` (mean of all R@K of both directions), ``num_images``, ``num_texts``.
    Recalls are fractions in [0, 1]."""
    i2t, t2i = retrieval_ranks(image_emb, text_emb, text_to_image, chunk_size)
    out: dict[str, float] = {}
    for name, ranks in (("image_to_text", i2t), ("text_to_image", t2i)):
        out.update({f"{name}_{key}": value for key, value in rank_summary(ranks, ks).items()})
    recalls = [v for k, v in out.items() if "_R@" in k]
    out["mean_recall"] = sum(recalls) / len(recalls)
    out["num_images"], out["num_texts"] = image_emb.shape[0], text_emb.shape[0]
    return out
