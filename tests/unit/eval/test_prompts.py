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
    obj.write_text(json.dumps({str(i): f"n{i}" for i in sorted(range(11), key=str)}))  # "0", "1", "10", "2", ...
    assert load_classnames(obj) == [f"n{i}" for i in range(11)]  # integer keys: numeric order
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


@pytest.mark.parametrize(("keys", "missing"), [(["0", "2", "3"], 1), (["1", "2"], 0), (["-1", "0"], 1),
                                               (["0", "1", "01"], 2)])
def test_integer_keys_must_be_0_to_n_minus_1(tmp_path, keys, missing):
    obj = tmp_path / "gap.json"
    obj.write_text(json.dumps({k: f"name {k}" for k in keys}))
    for keyed in (False, True):  # a gap would give every later class the next one's name
        with pytest.raises(CliplabError, match=rf"gap\.json: integer keys must be 0\.\.{len(keys) - 1}, each once; "
                                               rf"key {missing} is missing"):
            load_classnames(obj, keyed=keyed)


@pytest.mark.parametrize("value", [["blue", "", "red"], ["blue", "  "], {"0": "blue", "1": ""}])
def test_empty_class_names_are_refused_in_lists_too(tmp_path, value):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(value))
    for keyed in (False, True):
        with pytest.raises(CliplabError, match=r"c\.json: entry 2 is empty"):
            load_classnames(path, keyed=keyed)


def test_a_line_file_remembers_its_first_blank_line_between_entries(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("# header\n\ncat\n# a comment\ndog\n\n\nbird\n\n")
    names = load_classnames(path)
    assert names == ["cat", "dog", "bird"] and names.blank_line == f"{path}:6"
    path.write_text("\n# header\ncat\n# between\ndog\n\n")  # leading, comment and trailing lines shift nothing
    assert load_classnames(path).blank_line is None
    assert load_classnames("imagenet").blank_line is None
