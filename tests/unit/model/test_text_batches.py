import torch

from cliplab.config import load_arch
from cliplab.eval.zeroshot import zero_shot_classifier
from cliplab.infer.embed import embed_texts
from cliplab.model.build import create_model
from cliplab.model.text_transformer import batches_by_length
from cliplab.tokenizer import get_tokenizer


def test_batches_cover_every_row_once_shortest_first():
    tokens = torch.tensor([[5, 6, 7, 0], [5, 0, 0, 0], [0, 9, 0, 0], [5, 6, 7, 8], [5, 6, 0, 0]])  # (5, 4)
    batches = batches_by_length(tokens, 2)
    assert [b.tolist() for b in batches] == [[1, 2], [4, 0], [3]]  # lengths 1, 2 | 2, 3 | 4; ties keep order


def _model():
    torch.manual_seed(0)
    return create_model(load_arch("ViT-Tiny-32px")).eval()


TEXTS = ["a", "a much longer caption with a great many words in it", "two words", "x " * 20, "b", "c d e"]


def test_embed_texts_keeps_input_order():
    model, tok = _model(), get_tokenizer()
    got = embed_texts(TEXTS, model, tok, batch_size=2)  # (N, D)
    with torch.no_grad():
        want = torch.cat([model.encode_text(tok([t]), normalize=True) for t in TEXTS])  # one text at a time
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-6)


def test_zero_shot_classifier_independent_of_batching():
    model, tok = _model(), get_tokenizer()
    names = ["cat", "a very long and detailed class name", "dog", "bird"]
    templates = ["{}", "a photo of a {}.", "a blurry low resolution photo of the {}, seen from far away."]
    small = zero_shot_classifier(model, tok, names, templates, batch_size=2)
    whole = zero_shot_classifier(model, tok, names, templates, batch_size=1000)
    with torch.no_grad():
        per_class = torch.stack([
            torch.nn.functional.normalize(
                torch.cat([model.encode_text(tok([t.format(n)]), normalize=True) for t in templates]).mean(0), dim=0)
            for n in names
        ], dim=1)  # (D, C): one prompt at a time, no batching at all
    torch.testing.assert_close(small, per_class, rtol=0, atol=1e-6)
    torch.testing.assert_close(whole, per_class, rtol=0, atol=1e-6)
