import math

import numpy as np
import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.eval.linear_probe import _sample_shots, _search, extract_features, few_shot_probe, linear_probe
from tests.unit.eval.toy import ToyEncoder, images_from_features


def blobs(n_per_class: int, classes: int = 3, d: int = 8, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, d) * 4.0
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + spread * rng.standard_normal((len(y), d))
    return x.astype(np.float32), y


def test_separable_features_are_classified_perfectly():
    xtr, ytr = blobs(40, seed=0)
    xte, yte = blobs(20, seed=1)
    res = linear_probe(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte)
    assert res.accuracy == 1.0
    assert res.val_accuracy == 1.0
    assert res.c in res.searched
    coarse = [10.0**e for e in range(-6, 7, 2)]
    assert all(any(math.isclose(c, k) for k in res.searched) for c in coarse)
    assert 11 <= len(res.searched) <= 15  # 7 coarse values + 4 refinements of 1 or 2 (fewer at an edge)
    assert all(1e-6 <= c <= 1e6 * (1 + 1e-9) for c in res.searched)
    assert res.c >= 1.0  # accuracy ties broken by log-loss: not the weakest-signal C=1e-6
    assert (res.n_train, res.n_test) == (120, 60)


def test_noisy_labels_make_the_probe_imperfect_but_above_chance():
    xtr, ytr = blobs(40, spread=2.5, seed=2)
    xte, yte = blobs(40, spread=2.5, seed=3)
    res = linear_probe(xtr, ytr, xte, yte, c_grid=[1e-4, 1e-2, 1.0])
    assert sorted(res.searched) == [1e-4, 1e-2, 1.0]
    assert res.val_accuracy == max(res.searched.values())
    assert 0.5 < res.accuracy < 1.0


def test_final_probe_is_refit_with_the_chosen_c_on_the_whole_training_set():
    """The reported accuracy is that of LogisticRegression(C=chosen) fit on all training samples, not on the
    search's train split, nor with the fallback C."""
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = blobs(40, spread=2.5, seed=2)
    xte, yte = blobs(40, spread=2.5, seed=3)
    res = linear_probe(xtr, ytr, xte, yte, c_grid=[1e-4, 1e-2, 1.0])
    assert res.c != 1.0  # the default fallback_c: the check below also tells the two apart
    clf = LogisticRegression(C=res.c, max_iter=1000, solver="lbfgs").fit(xtr.astype(np.float64), ytr)
    assert res.accuracy == clf.score(xte.astype(np.float64), yte)


def test_coarse_to_fine_search_finds_the_peak_to_an_eighth_of_a_decade():
    calls = []

    def score(c):
        calls.append(c)
        return (-abs(math.log10(c) - 1.3),)

    scores = _search(score, None)
    best = max(scores, key=scores.get)
    assert math.log10(best) == pytest.approx(1.25)
    assert len(calls) == len(set(calls)) == 15  # nothing fit twice


def test_search_breaks_ties_by_second_score_then_smaller_c():
    scores = _search(lambda c: (1.0,), None)  # all equal: walks to the smallest C
    assert max(scores, key=lambda c: (*scores[c], -c)) == pytest.approx(1e-6)
    scores = _search(lambda c: (1.0, -abs(math.log10(c) + 2.2)), None)  # accuracy ties, loss decides
    assert math.log10(max(scores, key=lambda c: scores[c])) == pytest.approx(-2.25)


def test_one_sample_per_class_falls_back_to_fixed_c():
    xtr, ytr = blobs(1)
    xte, yte = blobs(10, seed=4)
    res = linear_probe(xtr, ytr, xte, yte, fallback_c=2.0)
    assert res.val_accuracy is None and res.c == 2.0 and res.searched == {}
    assert res.accuracy == 1.0


def test_sample_shots_takes_k_per_class():
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = _sample_shots(y, 4, seed=0)
    assert np.bincount(y[idx]).tolist() == [4, 3, 4]  # class 1 has only 3
    assert not np.array_equal(idx, _sample_shots(y, 4, seed=1))


def test_few_shot_output_shape_and_stats():
    xtr, ytr = blobs(20, spread=1.5, seed=5)
    xte, yte = blobs(20, spread=1.5, seed=6)
    res = few_shot_probe(xtr, ytr, xte, yte, shots=(1, 2, 4), seeds=(0, 1), c_grid=[0.1, 1.0])
    assert res.shots == [1, 2, 4]
    assert [len(a) for a in res.accuracies] == [2, 2, 2]
    for mean, std, accs in zip(res.mean, res.std, res.accuracies, strict=True):
        assert mean == pytest.approx(np.mean(accs))
        assert std == pytest.approx(np.std(accs, ddof=1))
        assert all(0.0 <= a <= 1.0 for a in accs)
    assert res.rows()[2]["shots"] == 4


def test_input_errors():
    x, y = blobs(5)
    with pytest.raises(CliplabError, match="two classes"):
        linear_probe(x, np.zeros(len(y)), x, y)
    with pytest.raises(CliplabError, match=r"\(N, D\)"):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(CliplabError, match="differ in length"):
        linear_probe(x, y[:-1], x, y)


def test_extract_features_normalises_and_keeps_labels():
    model = ToyEncoder(torch.eye(4))
    feats = torch.tensor([[3.0, 4.0, 0, 0], [0, 0, 2.0, 0], [1.0, 1.0, 1.0, 1.0]])
    batches = [(images_from_features(feats[:2]), torch.tensor([1, 0])), (images_from_features(feats[2:]), [2])]
    x, y = extract_features(model, batches)
    torch.testing.assert_close(x, torch.nn.functional.normalize(feats, dim=-1))
    assert y.tolist() == [1, 0, 2]
    raw, _ = extract_features(model, batches, normalize=False)
    torch.testing.assert_close(raw, feats)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_seeds_must_be_non_negative_integers(seed):
    xtr, ytr = blobs(4, seed=0)
    with pytest.raises(CliplabError, match=r"linear probe: seed .* is not a non-negative integer"):
        linear_probe(xtr, ytr, xtr, ytr, seed=seed)
    with pytest.raises(CliplabError, match=r"few-shot probe: seed .* is not a non-negative integer"):
        few_shot_probe(xtr, ytr, xtr, ytr, shots=[1], seeds=[0, seed])
    with pytest.raises(CliplabError, match="at least one k"):
        few_shot_probe(xtr, ytr, xtr, ytr, shots=[], seeds=[0])
