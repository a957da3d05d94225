import statistics

import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.eval.retrieval import rank_summary, retrieval_metrics, retrieval_ranks


def naive_ranks(img: torch.Tensor, txt: torch.Tensor, t2i: torch.Tensor,
                scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full similarity matrix, one row/column at a time: 1 + wrong candidates scoring >= the correct one."""
    scores = img @ txt.T if scores is None else scores  # (Ni, Nt)
    i2t = []
    for i in range(img.shape[0]):
        own = t2i == i
        best = scores[i, own].max()
        i2t.append(1 + int((scores[i, ~own] >= best).sum()))
    t2i_ranks = []
    for t in range(txt.shape[0]):
        own = torch.arange(img.shape[0]) == t2i[t]
        t2i_ranks.append(1 + int((scores[~own, t] >= scores[t2i[t], t]).sum()))
    return torch.tensor(i2t), torch.tensor(t2i_ranks)


def random_case(ni: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 5, (ni,), generator=g)  # 1-4 captions per image
    t2i = torch.repeat_interleave(torch.arange(ni), counts)
    t2i = t2i[torch.randperm(t2i.numel(), generator=g)]  # captions not grouped by image
    img = torch.nn.functional.normalize(torch.randn(ni, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img[t2i] + 0.9 * torch.randn(t2i.numel(), d, generator=g), dim=-1)
    return img, txt, t2i


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 4096])
def test_chunked_ranks_equal_naive_full_matrix(chunk_size):
    img, txt, t2i = random_case(53, 12, seed=chunk_size)
    want_i2t, want_t2i = naive_ranks(img, txt, t2i)
    assert 1 < want_i2t.max() and 1 < want_t2i.max()  # the case is not trivially solved
    got_i2t, got_t2i = retrieval_ranks(img, txt, t2i, chunk_size=chunk_size)
    assert torch.equal(got_i2t, want_i2t)
    assert torch.equal(got_t2i, want_t2i)


def test_metrics_match_naive_recall_and_ranks():
    img, txt, t2i = random_case(40, 8, seed=3)
    i2t, t2i_r = naive_ranks(img, txt, t2i)
    m = retrieval_metrics(img, txt, t2i, ks=(1, 5, 10), chunk_size=9)
    for k in (1, 5, 10):
        assert m[f"image_to_text_R@{k}"] == pytest.approx(float((i2t <= k).float().mean()))
        assert m[f"text_to_image_R@{k}"] == pytest.approx(float((t2i_r <= k).float().mean()))
    assert m["image_to_text_mean_rank"] == pytest.approx(float(i2t.float().mean()))
    assert m["text_to_image_median_rank"] == pytest.approx(statistics.median(t2i_r.tolist()))
    assert m["num_images"] == 40 and m["num_texts"] == t2i.numel()
    recalls = [v for k, v in m.items() if "_R@" in k]
    assert m["mean_recall"] == pytest.approx(sum(recalls) / 6)


def test_hand_built_case_with_known_recall():
    # 3 images on the axes; 5 captions with integer coordinates (exact float arithmetic)
    img = torch.eye(3)
    txt = torch.tensor([
        [5.0, 1.0, 0.0],  # t0 of image 0: image 0 best
        [0.0, 1.0, 3.0],  # t1 of image 0: image 0 scores 0 -> image 2 (3) and image 1 (1) above: rank 3
        [2.0, 4.0, 0.0],  # t2 of image 1: image 1 best
        [0.0, 2.0, 2.0],  # t3 of image 2: tie with image 1 -> pessimistic rank 2
        [1.0, 0.0, 0.0],  # t4 of image 2: image 2 scores 0, image 0 scores 1, image 1 ties at 0 -> rank 3
    ])
    t2i = torch.tensor([0, 0, 1, 2, 2])
    i2t, t2i_r = retrieval_ranks(img, txt, t2i, chunk_size=2)
    # image 0: best own score 5 (t0), no wrong caption reaches 5 -> 1
    # image 1: own t2 scores 4; wrong: t0=1, t1=1, t3=2, t4=0 -> 1
    # image 2: own best = max(t3=2, t4=0) = 2; wrong: t1=3 >= 2 -> rank 2
    assert i2t.tolist() == [1, 1, 2]
    assert t2i_r.tolist() == [1, 3, 1, 2, 3]
    m = retrieval_metrics(img, txt, t2i, ks=(1, 2))
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@2"] == 1.0
    assert m["text_to_image_R@1"] == pytest.approx(2 / 5)
    assert m["text_to_image_R@2"] == pytest.approx(3 / 5)
    assert m["text_to_image_mean_rank"] == pytest.approx(10 / 5)
    assert m["text_to_image_median_rank"] == 2.0
    assert m["image_to_text_median_rank"] == 1.0


def test_ties_are_pessimistic_so_a_collapsed_model_scores_chance():
    img, txt = torch.zeros(4, 8), torch.zeros(8, 8)
    t2i = torch.arange(4).repeat(2)
    i2t, t2i_r = retrieval_ranks(img, txt, t2i)
    assert i2t.tolist() == [7] * 4  # 6 wrong captions tie with the best own one
    assert t2i_r.tolist() == [4] * 8  # 3 wrong images tie
    assert retrieval_metrics(img, txt, t2i)["image_to_text_R@1"] == 0.0


def test_rank_summary_median_even_and_odd():
    assert rank_summary(torch.tensor([1, 3, 10, 2]), ks=(1,))["median_rank"] == 2.5
    assert rank_summary(torch.tensor([4, 1, 9]), ks=(1,))["median_rank"] == 4.0


def test_input_errors():
    img, txt = torch.randn(3, 4), torch.randn(4, 4)
    with pytest.raises(CliplabError, match="image 2 has no text"):
        retrieval_metrics(img, txt, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(CliplabError, match="3 text_to_image entries for 4 texts"):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2]))
    with pytest.raises(CliplabError, match="outside"):
        retrieval_metrics(img, txt, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(CliplabError, match=r"\(Ni, D\)"):
        retrieval_metrics(img, torch.randn(4, 5), torch.tensor([0, 1, 2, 2]))


@pytest.mark.parametrize("seed", range(20))
def test_duplicate_captions_and_images_tie_pessimistically(seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(2, 512, generator=g), dim=-1)
    cap = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    i2t, _ = retrieval_ranks(img, cap.repeat(2, 1), torch.tensor([0, 1]))  # one caption text for both images
    assert i2t.tolist() == [2, 2]  # each image's own caption ties with the other's: the worse rank
    _, t2i = retrieval_ranks(img[:1].repeat(2, 1), torch.randn(2, 512, generator=g), torch.tensor([0, 1]))
    assert t2i.tolist() == [2, 2]  # identical images


@pytest.mark.parametrize("seed", range(3))
def test_exact_duplicates_tie_whatever_the_chunk_size(seed):
    """Duplicates in different blocks: a float32 block product would round each copy's score by its place."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(37, 512, generator=g), dim=-1)
    img[20], img[36] = img[3], img[0]  # duplicate images
    t2i = torch.arange(37).repeat_interleave(2)
    txt = torch.nn.functional.normalize(torch.randn(74, 512, generator=g), dim=-1)
    txt[10], txt[7], txt[41] = txt[50], img[3], img[20]  # a duplicate caption; captions equal to images
    want = naive_ranks(img, txt, t2i, scores=(img.double() @ txt.double().T).float())  # float64, then rounded
    for chunk_size in (1, 5, 16, 17, 36, 4096):
        got = retrieval_ranks(img, txt, t2i, chunk_size=chunk_size)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), chunk_size
