import math

import pytest
import torch
from PIL import Image

from cliplab.errors import CliplabError
from cliplab.eval.plots import plot_confusion
from cliplab.eval.zeroshot import load_classifier, save_classifier, zero_shot_classifier, zero_shot_evaluate
from tests.unit.eval.toy import TableTokenizer, ToyEncoder, images_from_features

PROMPTS = ["a cat", "the cat", "a dog", "the dog"]
TABLE = torch.tensor([[3.0, 4.0], [2.0, 0.0], [0.0, 5.0], [-1.0, 1.0]])  # embeddings of PROMPTS


def test_classifier_matches_hand_computation():
    model, tok = ToyEncoder(TABLE), TableTokenizer(PROMPTS)
    w = zero_shot_classifier(model, tok, ["cat", "dog"], ["a {}", "the {}"])
    # cat: mean of (0.6, 0.8) and (1, 0) = (0.8, 0.4), normalised -> (2, 1)/sqrt(5)
    cat = torch.tensor([2.0, 1.0]) / math.sqrt(5)
    # dog: mean of (0, 1) and (-1, 1)/sqrt(2), normalised
    r = 1 / math.sqrt(2)
    dog = torch.tensor([-r / 2, (1 + r) / 2])
    dog = dog / dog.norm()
    assert w.shape == (2, 2)  # (D, C)
    torch.testing.assert_close(w[:, 0], cat)
    torch.testing.assert_close(w[:, 1], dog)


def test_classifier_is_independent_of_batch_size_and_template_forms():
    model = ToyEncoder(TABLE)
    tok = TableTokenizer(PROMPTS)
    w_big = zero_shot_classifier(model, tok, ["cat", "dog"], ["a {}", "the {}"], batch_size=256)
    small = ToyEncoder(TABLE)
    w_small = zero_shot_classifier(small, tok, ["cat", "dog"], ["a {}", "the {}"], batch_size=3)
    assert small.text_batches == [3, 1]
    torch.testing.assert_close(w_big, w_small)
    # one template as a bare string == a list of that template
    w1 = zero_shot_classifier(model, tok, ["cat", "dog"], "the {}")
    torch.testing.assert_close(w1, torch.nn.functional.normalize(TABLE[[1, 3]], dim=-1).T)


def test_builtin_template_name_is_resolved():
    prompts = ["a photo of a cat.", "a photo of a dog."]
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w = zero_shot_classifier(ToyEncoder(table), TableTokenizer(prompts), ["cat", "dog"], "simple")
    torch.testing.assert_close(w, torch.eye(2))


def test_classifier_rejects_bad_input():
    model, tok = ToyEncoder(TABLE), TableTokenizer(PROMPTS)
    with pytest.raises(CliplabError, match="empty"):
        zero_shot_classifier(model, tok, [], ["a {}"])
    with pytest.raises(CliplabError, match="placeholder"):
        zero_shot_classifier(model, tok, ["cat"], ["a {}", "no slot"])


def _ranked_scores(true_class: int, rank: int, num_classes: int) -> torch.Tensor:
    """A score vector in which ``true_class`` is at position ``rank`` (1-based) of the descending order."""
    order = [c for c in range(num_classes) if c != true_class]
    order.insert(rank - 1, true_class)
    scores = torch.zeros(num_classes)
    for position, c in enumerate(order):
        scores[c] = num_classes - position
    return scores


def test_evaluate_known_top1_top5_confusion_and_per_class():
    c = 7
    model = ToyEncoder(torch.eye(c))
    classifier = torch.eye(c)  # logits = normalised image feature
    labels = [0, 0, 1, 1, 2, 3, 4, 5]
    ranks = [1, 2, 1, 6, 1, 5, 7, 1]
    feats = torch.stack([_ranked_scores(y, r, c) for y, r in zip(labels, ranks, strict=True)])
    images, y = images_from_features(feats), torch.tensor(labels)
    res = zero_shot_evaluate(model, classifier, [(images[:3], y[:3]), (images[3:], y[3:])])
    assert res.n == 8
    assert res.top1 == pytest.approx(4 / 8)
    assert res.top5 == pytest.approx(6 / 8)
    expected = torch.zeros(c, c, dtype=torch.long)
    for label, f in zip(labels, feats, strict=True):
        expected[label, int(f.argmax())] += 1
    assert torch.equal(res.confusion, expected)
    # per-class recall: class 0: 1/2, class 1: 1/2, class 2: 1, class 3: 0, class 4: 0, class 5: 1; class 6 absent
    assert res.mean_per_class_recall == pytest.approx((0.5 + 0.5 + 1 + 0 + 0 + 1) / 6)
    rows = res.per_class([f"c{i}" for i in range(c)])
    assert rows[0] == {"class": 0, "name": "c0", "support": 2, "correct": 1, "recall": 0.5}
    assert rows[6]["support"] == 0 and rows[6]["recall"] is None
    assert res.to_dict()["top1"] == res.top1


def test_evaluate_end_to_end_with_built_classifier():
    # image features point at their class's prompt embedding, with noise: all correct
    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    prompts = ["a photo of a w.", "a photo of a x.", "a photo of a y.", "a photo of a z."]
    model = ToyEncoder(table)
    w = zero_shot_classifier(model, TableTokenizer(prompts), ["w", "x", "y", "z"], "simple")
    labels = torch.arange(4).repeat(5)
    feats = table[labels] + 0.05 * torch.randn(20, 16)
    res = zero_shot_evaluate(model, w, [(images_from_features(feats), labels)])
    assert res.top1 == 1.0 and res.mean_per_class_recall == 1.0


def test_evaluate_rejects_labels_outside_the_classifier():
    model = ToyEncoder(torch.eye(3))
    with pytest.raises(CliplabError, match="label 3"):
        zero_shot_evaluate(model, torch.eye(3), [(images_from_features(torch.eye(3)), torch.tensor([0, 1, 3]))])
    with pytest.raises(CliplabError, match="no images"):
        zero_shot_evaluate(model, torch.eye(3), [])


def test_save_load_classifier_roundtrip(tmp_path):
    w = torch.nn.functional.normalize(torch.randn(8, 3), dim=0)
    path = tmp_path / "sub" / "clf.safetensors"
    save_classifier(path, w, ["a", "b", "c"], ["a photo of a {}.", "the {}."])
    loaded = load_classifier(path)
    assert torch.equal(loaded.weights, w)
    assert loaded.classnames == ["a", "b", "c"]
    assert loaded.templates == ["a photo of a {}.", "the {}."]
    weights, names, _, fingerprint = loaded  # unpacks like a tuple
    assert fingerprint is None  # none given
    assert weights is loaded.weights
    assert names == ["a", "b", "c"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["clf.safetensors"]  # no temporary left


def test_save_load_classifier_errors(tmp_path):
    with pytest.raises(CliplabError, match="do not match"):
        save_classifier(tmp_path / "x.safetensors", torch.zeros(4, 2), ["a", "b", "c"], "simple")
    with pytest.raises(CliplabError, match="no such file"):
        load_classifier(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CliplabError, match=r"junk\.safetensors"):
        load_classifier(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CliplabError, match="not a cliplab zero-shot classifier"):
        load_classifier(other)


def test_plot_confusion_writes_a_png(tmp_path):
    model = ToyEncoder(torch.eye(3))
    feats = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    res = zero_shot_evaluate(model, torch.eye(3), [(images_from_features(feats), torch.tensor([0, 1, 2]))])
    path = tmp_path / "confusion.png"
    plot_confusion(res, ["red", "green", "blue"], path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]


def test_collapsed_text_tower_ties_count_as_wrong_everywhere():
    # every class has the same weight (a collapsed text tower): all logits of a row tie, so no class is found
    c = 10
    classifier = torch.ones(c, c) / math.sqrt(c)  # (D, C): identical columns
    feats = torch.eye(c)[[0, 3, 5, 8, 9, 1]]  # one non-zero feature: every logit is exactly 1/sqrt(10)
    res = zero_shot_evaluate(ToyEncoder(torch.eye(c)), classifier,
                             [(images_from_features(feats), torch.full((6,), 8))])
    assert res.top1 == 0.0 and res.top5 == 0.0
    assert int(res.confusion.trace()) == 0 and int(res.confusion[8, 0]) == 6  # first tied class other than 8
    assert res.mean_per_class_recall == 0.0


def test_pessimistic_ranks_predictions_and_top1_agree_with_the_confusion_matrix():
    from cliplab.eval.metrics import predictions, topk_correct, true_class_rank

    logits = torch.tensor([
        [1.0, 3.0, 3.0, 0.0],  # label 1 tied with 2 for the top: rank 2, predicted 2
        [2.0, 1.0, 1.0, 1.0],  # label 0 alone on top: rank 1
        [0.0, 0.0, 0.0, 0.0],  # all tied: rank 4, predicted 0
        [float("nan"), 1.0, 0.0, 0.0],  # a NaN true logit ranks last
    ])
    labels = torch.tensor([1, 0, 3, 0])
    assert true_class_rank(logits, labels).tolist() == [2, 1, 4, 4]
    assert predictions(logits, labels).tolist() == [2, 0, 0, 1]
    assert topk_correct(logits, labels, (1, 2, 4, 9)) == {1: 1, 2: 2, 4: 4, 9: 4}
    # many ties: top-1 hits are exactly the confusion matrix's diagonal
    gen = torch.Generator().manual_seed(0)
    feats = torch.randint(0, 3, (200, 5), generator=gen).float() + 1  # (N, C) with frequent ties
    y = torch.randint(0, 5, (200,), generator=gen)
    res = zero_shot_evaluate(ToyEncoder(torch.eye(5)), torch.eye(5), [(images_from_features(feats, 5), y)])
    assert res.top1 * res.n == pytest.approx(float(res.confusion.trace()))


def test_a_class_name_too_long_for_the_context_is_named():
    import cliplab
    from cliplab.config import TokenizerConfig
    from cliplab.tokenizer import get_tokenizer

    model = cliplab.create_model("ViT-Tiny-32px").eval()  # a 32-token context
    names = ["cat", "a " + "very " * 40 + "long name"]
    with pytest.raises(CliplabError, match=r"^class 'a very very .*\.\.\.': text .* more than the context "
                                           r"length 32; give it a shorter name \(--classnames\)$"):
        zero_shot_classifier(model, get_tokenizer(TokenizerConfig(context_length=32)), names, ["a photo of a {}."])


class BatchShapedEncoder(ToyEncoder):
    """Like a real text tower, the embedding of a text depends (in its last bits) on the batch it is in."""

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = super().encode_text(tokens)
        return emb * (1 + 1e-4 * torch.arange(len(tokens)))[:, None]  # (N, D)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 256])
def test_a_duplicated_class_name_gets_the_same_column_and_is_embedded_once(batch_size):
    model = BatchShapedEncoder(TABLE)
    w = zero_shot_classifier(model, TableTokenizer(PROMPTS), ["cat", "dog", "cat"], ["a {}", "the {}"],
                             batch_size=batch_size)
    assert torch.equal(w[:, 0], w[:, 2])  # so the two tie pessimistically in every batching
    assert sum(model.text_batches) == 4  # each distinct prompt once


def test_a_repeated_template_counts_twice_but_is_embedded_once():
    model = ToyEncoder(TABLE)
    w = zero_shot_classifier(model, TableTokenizer(PROMPTS), ["cat", "dog"], ["a {}", "the {}", "a {}"])
    assert sum(model.text_batches) == 4
    unit = torch.nn.functional.normalize(TABLE, dim=-1)  # rows: a cat, the cat, a dog, the dog
    torch.testing.assert_close(w, torch.nn.functional.normalize(2 * unit[[0, 2]] + unit[[1, 3]], dim=-1).T)


def test_a_name_listed_twice_counts_for_the_first_as_argmax_decides():
    """ImageNet lists "missile" (657, 744) and "sunglasses" (836, 837) twice. Their columns are equal, so they
    always tie; counted pessimistically both were always wrong. OpenAI's argmax gives the tie to the first."""
    from cliplab.eval.metrics import namesakes, predictions, true_class_rank

    names = ["cat", "missile", "dog", "missile"]
    logits = torch.tensor([[0.1, 0.9, 0.2, 0.9]] * 2 + [[0.9, 0.1, 0.9, 0.1]])  # the twins tie on top; then cat/dog
    labels = torch.tensor([1, 3, 2])
    groups = namesakes(names)
    assert groups.tolist() == [0, 1, 2, 1]
    assert true_class_rank(logits, labels, groups).tolist() == [1, 2, 2]  # the first twin wins; cat/dog stay tied
    assert predictions(logits, labels, groups).tolist() == [1, 1, 0]
    assert predictions(logits, labels, groups).tolist() == logits.argmax(dim=1).tolist()[:2] + [0]
    classifier = torch.eye(4)[:, [0, 1, 2, 1]]  # (D, C): the twins' columns equal
    feats = torch.eye(4)[[1, 1, 0]]  # images that look like "missile", "missile", "cat"
    batches = [(images_from_features(feats), torch.tensor([1, 3, 0]))]
    res = zero_shot_evaluate(ToyEncoder(torch.eye(4)), classifier, batches, classnames=names)
    assert res.top1 == pytest.approx(2 / 3) and res.confusion[3, 1] == 1  # the second twin's image: "the first"
    assert zero_shot_evaluate(ToyEncoder(torch.eye(4)), classifier, batches).top1 == pytest.approx(1 / 3)


def test_the_classifier_keeps_no_graph():
    """Built under grad mode, it kept every prompt's activations for a backward nobody runs (GBs for
    ImageNet's 80,000 prompts)."""
    import cliplab
    from cliplab.tokenizer import get_tokenizer

    model = cliplab.create_model("ViT-Tiny-32px")
    with torch.enable_grad():
        w = zero_shot_classifier(model, get_tokenizer(), ["cat", "dog"], ["a photo of a {}."])
    assert not w.requires_grad and w.grad_fn is None
