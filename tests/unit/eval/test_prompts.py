import json

import pytest

from cliplab.errors import CliplabError
from cliplab.eval.prompts import load_classnames, load_templates


def test_openai_imagenet_templates_are_the_80_published_prompts():
    templates = load_templates("openai-imagenet")
    assert len(templates) == 80
    assert len(set(templates)) == 80
    assert all(t.count("{}") == 1 for t in templates)
    assert templates[0] == "a bad photo of a {}."
    assert templates[-1] == "a tattoo of the {}."
    assert "itap of my {}." in templates


def test_simple_template():
    assert load_templates("simple") == ["a photo of a {}."]


def test_imagenet_classnames_are_openai_s_1000_in_imagenet_order():
    names = load_classnames("imagenet")
    assert len(names) == 1000
    # spot checks at known ImageNet-1k indices
    assert names[0] == "tench"
    assert names[1] == "goldfish"
    assert names[151] == "Chihuahua"
    assert names[281] == "tabby cat"
    assert names[398] == "abacus"
    assert names[999] == "toilet paper"
    # OpenAI's list keeps two duplicates (projectile/missile, sunglass/sunglasses)
    assert names[657] == names[744] == "missile"
    assert names[836] == names[837] == "sunglasses"
    assert len(set(names)) == 998


def test_files_lines_json_list_and_json_object(tmp_path):
    lines = tmp_path / "t.txt"
    lines.write_text("# my prompts\na {} here.\n\n  the {}.  \n")
    assert load_templates(lines) == ["a {} here.", "the {}."]
    js = tmp_path / "c.json"
    js.write_text(json.dumps(["cat", "dog"]))
    assert load_classnames(js) == ["cat", "dog"]
    obj = tmp_path / "o.json"
    obj.write_text(json.dumps({"10": "ten", "2": "two", "1": "one"}))
    assert load_classnames(obj) == ["one", "two", "ten"]  # integer keys: numeric order
    wn = tmp_path / "wn.json"
    wn.write_text(json.dumps({"n02": "dog", "n01": "cat"}))
    assert load_classnames(wn) == ["dog", "cat"]  # other keys: file order


@pytest.mark.parametrize("text", ["no placeholder here", "two {} {}", "named {x}"])
def test_bad_template_is_one_line_error_naming_the_line(tmp_path, text):
    path = tmp_path / "bad.txt"
    path.write_text(f"a {{}}.\n{text}\n")
    with pytest.raises(CliplabError, match=r"bad\.txt: template 2"):
        load_templates(path)


def test_unknown_name_and_missing_file():
    with pytest.raises(CliplabError, match="built-in"):
        load_templates("openai-imagenett")
    with pytest.raises(CliplabError, match="no such file"):
        load_classnames("missing.txt")


def test_malformed_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('["cat", ')
    with pytest.raises(CliplabError, match="malformed JSON"):
        load_classnames(path)
    path.write_text('[1, 2]')
    with pytest.raises(CliplabError, match="list of strings"):
        load_classnames(path)


@pytest.mark.parametrize("key", ["--1", "²", "-"])
def test_keys_int_rejects_are_names_not_a_crash(tmp_path, key):
    # "--1" and "²" pass str.isdigit() after lstrip("-") but int() refuses them: they are names
    obj = tmp_path / "o.json"
    obj.write_text(json.dumps({key: "odd", "0": "zero"}))
    assert load_classnames(obj) == ["odd", "zero"]  # not all integer keys: file order
    assert load_classnames(obj, keyed=True) == {key: "odd", "0": "zero"}
