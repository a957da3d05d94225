import numpy as np
import pytest
import torch
from PIL import Image

from cliplab.config import PreprocessConfig
from cliplab.errors import CliplabError, CliplabWarning
from cliplab.eval.datasets import ClassFolderDataset, LabelCsvDataset, make_loader
from cliplab.eval.zeroshot import zero_shot_classifier, zero_shot_evaluate
from cliplab.transforms import ImageError, Preprocess
from tests.unit.eval.toy import TableTokenizer, ToyEncoder

COLOURS = {"n01_red": (255, 0, 0), "n02_green": (0, 255, 0), "n03_blue": (0, 0, 255)}


def stand_in(img: Image.Image) -> torch.Tensor:
    """A minimal transform: RGB pixels in [0, 1], (3, H, W)."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)  # (3, H, W)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "val"
    for name, rgb in COLOURS.items():
        (root / name / "nested").mkdir(parents=True)
        for i in range(3):
            sub = root / name / ("nested" if i == 2 else "")
            Image.new("RGB", (12 + i, 10), rgb).save(sub / f"{i}.png")
    (root / "n02_green" / "notes.txt").write_text("not an image")
    return root


def test_folder_classes_labels_and_renaming(folder):
    ds = ClassFolderDataset(folder, stand_in)
    assert ds.classes == ["n01_red", "n02_green", "n03_blue"]
    assert ds.classnames == ds.classes
    assert len(ds) == 9
    assert [label for _, label in ds.samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    img, label = ds[4]
    assert label == 1 and img.shape == (3, 10, 13) and img[1].min() == 1.0 and img[0].max() == 0.0
    renamed = ClassFolderDataset(folder, stand_in, classnames=["red", "green", "blue"])
    assert renamed.classnames == ["red", "green", "blue"]
    mapped = ClassFolderDataset(folder, stand_in, classnames={"n03_blue": "B", "n01_red": "R", "n02_green": "G"})
    assert mapped.classnames == ["R", "G", "B"]


def test_folder_errors(folder, tmp_path):
    with pytest.raises(CliplabError, match="2 class names given for 3 classes"):
        ClassFolderDataset(folder, stand_in, classnames=["a", "b"])
    with pytest.raises(CliplabError, match="n03_blue"):
        ClassFolderDataset(folder, stand_in, classnames={"n01_red": "r", "n02_green": "g"})
    with pytest.raises(CliplabError, match="no class sub-folders"):
        ClassFolderDataset(tmp_path / "val" / "n01_red" / "nested", stand_in)
    (folder / "n01_red" / "0.png").write_bytes(b"broken")
    with pytest.raises(ImageError, match=r"n01_red/0\.png"):
        ClassFolderDataset(folder, stand_in)[0]


def test_zero_shot_end_to_end_on_a_folder(folder):
    """Solid-colour images, a toy encoder that pools each channel, prompts embedded on the RGB axes."""
    prompts = ["a photo of a red.", "a photo of a green.", "a photo of a blue."]
    model = ToyEncoder(torch.eye(3), pool=True)
    ds = ClassFolderDataset(folder, Preprocess(PreprocessConfig(image_size=8)), classnames=["red", "green", "blue"])
    w = zero_shot_classifier(model, TableTokenizer(prompts), ds.classnames, "simple")
    res = zero_shot_evaluate(model, w, make_loader(ds, batch_size=4))
    assert res.n == 9 and res.top1 == 1.0
    assert torch.equal(res.confusion, 3 * torch.eye(3, dtype=torch.long))


def write_csv(path, rows, header=("filepath", "label")):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def test_csv_integer_labels_with_classnames(folder, tmp_path):
    csv = write_csv(tmp_path / "val.csv", [("val/n01_red/0.png", 0), ("val/n03_blue/1.png", 2)])
    ds = LabelCsvDataset(csv, stand_in, classnames=["red", "green", "blue"])
    assert ds.classnames == ["red", "green", "blue"]
    assert len(ds) == 2 and ds[1][1] == 2 and ds[1][0][2].min() == 1.0
    with pytest.warns(CliplabWarning, match="the prompts name the numbers themselves"):
        plain = LabelCsvDataset(csv, stand_in)
    assert plain.classnames == ["0", "1", "2"]
    sparse = write_csv(tmp_path / "ids.csv", [("val/n01_red/0.png", 0), ("val/n03_blue/1.png", 50000)])
    with pytest.raises(CliplabError, match=r"class indices up to 50000, but only 2 values appear; give --classnames"):
        LabelCsvDataset(sparse, stand_in)  # not 50,001 classes and a confusion matrix to match


def test_csv_string_labels_custom_columns(folder, tmp_path):
    csv = write_csv(tmp_path / "v.tsv", [("val/n01_red/0.png", "red"), ("val/n02_green/0.png", "green")],
                    header=("img", "cls"))
    csv.write_text(csv.read_text().replace(",", "\t"))
    ds = LabelCsvDataset(csv, stand_in, img_key="img", label_key="cls", sep="\t")
    assert ds.classnames == ["green", "red"]  # sorted without a class-name list
    assert [label for _, label in ds.samples] == [1, 0]
    ordered = LabelCsvDataset(csv, stand_in, img_key="img", label_key="cls", sep="\t",
                              classnames=["red", "green", "blue"])
    assert [label for _, label in ordered.samples] == [0, 1]
    mapped = LabelCsvDataset(csv, stand_in, img_key="img", label_key="cls", sep="\t",
                             classnames={"red": "a red thing", "green": "a green thing"})
    assert mapped.classnames == ["a green thing", "a red thing"] and mapped.classes == ["green", "red"]


def test_csv_errors_name_the_row(folder, tmp_path):
    csv = write_csv(tmp_path / "a.csv", [("val/n01_red/0.png", 0), ("val/n01_red/1.png", 3)])
    with pytest.raises(CliplabError, match=r"a\.csv:3: label 3 is outside 0\.\.2"):
        LabelCsvDataset(csv, stand_in, classnames=["r", "g", "b"])
    csv = write_csv(tmp_path / "b.csv", [("val/n01_red/0.png", "red"), ("val/n01_red/1.png", "pink")])
    with pytest.raises(CliplabError, match=r"b\.csv:3: label 'pink'"):
        LabelCsvDataset(csv, stand_in, classnames=["red", "green"])
    csv = write_csv(tmp_path / "c.csv", [("missing.png", 0)])
    with pytest.raises(CliplabError, match=r"c\.csv:2: image .*missing\.png does not exist"):
        LabelCsvDataset(csv, stand_in)[0]
    with pytest.raises(CliplabError, match="missing column"):
        LabelCsvDataset(csv, stand_in, label_key="class")


@pytest.mark.parametrize("odd", ["--1", "²", "-"])
def test_csv_labels_int_rejects_are_class_names(folder, tmp_path, odd):
    csv = write_csv(tmp_path / "odd.csv", [("val/n01_red/0.png", odd), ("val/n02_green/1.png", 2)])
    ds = LabelCsvDataset(csv, stand_in)
    assert ds.classes == sorted([odd, "2"]) and len(ds) == 2


@pytest.mark.parametrize("bad", [b"caf\xe9", b"\xff"])
def test_csv_labels_must_be_utf8(folder, tmp_path, bad):
    path = tmp_path / "l.csv"  # read_rows keeps such bytes as lone surrogates ("\udce9")
    path.write_bytes(b"filepath,label\nval/n02_green/0.png,green\nval/n01_red/0.png," + bad + b"\n")
    with pytest.raises(CliplabError, match=r"l\.csv:3: label is not valid UTF-8"):
        LabelCsvDataset(path, stand_in)


def test_folder_names_must_be_utf8_unless_renamed(folder):
    import os

    odd = os.fsdecode(b"n04_caf\xe9")  # a folder name that is not UTF-8 comes back with a lone surrogate
    (folder / odd).mkdir()
    Image.new("RGB", (10, 10)).save(folder / odd / "0.png")
    with pytest.raises(CliplabError, match=r"class folder 'n04_caf\\udce9': its name is not valid UTF-8"):
        ClassFolderDataset(folder, stand_in)
    ds = ClassFolderDataset(folder, stand_in, classnames=["red", "green", "blue", "café"])
    assert ds.classnames[-1] == "café"


def numbered_folders(root, numbers):
    for k in numbers:
        (root / str(k)).mkdir(parents=True)
        Image.new("RGB", (4, 4), (k, 0, 0)).save(root / str(k) / "a.png")
    return root


def test_numbered_folders_are_ordered_as_numbers_and_folder_k_takes_name_k(tmp_path):
    import json

    from cliplab.eval.prompts import load_classnames

    root = numbered_folders(tmp_path / "val", range(12))
    ds = ClassFolderDataset(root, stand_in)
    assert ds.classes == [str(k) for k in range(12)]  # not "0", "1", "10", "11", "2", ...
    assert [ds[i][0][0, 0, 0].item() * 255 for i in range(12)] == pytest.approx(range(12))  # label k: folder k
    assert [label for _, label in ds.samples] == list(range(12))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(k): f"name {k}" for k in range(12)}))
    for given in (load_classnames(names, keyed=True), [f"name {k}" for k in range(12)]):
        assert ClassFolderDataset(root, stand_in, classnames=given).classnames == [f"name {k}" for k in range(12)]


def test_numbered_folders_missing_some_numbers(tmp_path):
    root = numbered_folders(tmp_path / "val", [0, 2, 10])
    names = [f"name {k}" for k in range(11)]
    assert ClassFolderDataset(root, stand_in, classnames=names).classnames == ["name 0", "name 2", "name 10"]
    with pytest.warns(CliplabWarning, match=r"12 class names given, but the class folders only reach 10"):
        ClassFolderDataset(root, stand_in, classnames=[*names, "spare"])
    with pytest.raises(CliplabError, match=r"class folder 10 needs at least 11 class names .*, 3 given"):
        ClassFolderDataset(root, stand_in, classnames=["a", "b", "c"])  # not matched by position
    (root / "02").mkdir()
    with pytest.raises(CliplabError, match=r"class folders '02' and '2' are both class 2"):
        ClassFolderDataset(root, stand_in)


def test_numbered_classes_refuse_a_names_file_with_a_blank_line_between_names(folder, tmp_path):
    from cliplab.eval.prompts import load_classnames

    names = tmp_path / "names.txt"
    names.write_text("# colours\nred\n\ngreen\nblue\n\n")  # the blank line could be a missing name
    csv = write_csv(tmp_path / "val.csv", [("val/n01_red/0.png", 0), ("val/n02_green/1.png", 1)])
    with pytest.raises(CliplabError, match=r"names\.txt:3: a blank line between class names; label k takes"):
        LabelCsvDataset(csv, stand_in, classnames=load_classnames(names))
    root = numbered_folders(tmp_path / "numbered", range(3))
    with pytest.raises(CliplabError, match=r"names\.txt:3: a blank line between class names; class folder k"):
        ClassFolderDataset(root, stand_in, classnames=load_classnames(names))
    assert ClassFolderDataset(folder, stand_in, classnames=load_classnames(names)).classnames == ["red", "green",
                                                                                                  "blue"]
    names.write_text("# colours\nred\ngreen\n# and\nblue\n")
    with pytest.warns(CliplabWarning, match=r"val\.csv: 3 class names given, but the labels only reach 1"):
        ds = LabelCsvDataset(csv, stand_in, classnames=load_classnames(names))  # a name missing would fit here
    assert ds.classnames == ["red", "green", "blue"]
    with pytest.raises(CliplabError, match=r"val\.csv:3: label 1 is outside 0\.\.0 \(1 class names given\)"):
        LabelCsvDataset(csv, stand_in, classnames=["red"])


def test_name_labels_refuse_a_class_name_listed_twice(folder, tmp_path):
    csv = write_csv(tmp_path / "val.csv", [("val/n01_red/0.png", "red"), ("val/n02_green/1.png", "green")])
    with pytest.raises(CliplabError, match=r"val\.csv: labels are class names, and 'red' is listed twice"):
        LabelCsvDataset(csv, stand_in, classnames=["red", "red", "green"])
    ints = write_csv(tmp_path / "ints.csv", [("val/n01_red/0.png", 0), ("val/n02_green/1.png", 1)])
    assert LabelCsvDataset(ints, stand_in, classnames=["red", "red"]).classnames == ["red", "red"]  # by number


def test_dot_files_in_class_folders_are_no_images(tmp_path):
    """A dataset copied from a Mac has a ``._name.png`` resource fork beside every image: not an image, so it
    stopped the evaluation. Names starting with a dot are left out, in class folders as in training folders."""
    from cliplab.data.folder import list_images
    from cliplab.eval.datasets import ClassFolderDataset

    for name in ("cat", "dog"):
        (tmp_path / name / ".thumbs").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.png")
        (tmp_path / name / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        Image.new("RGB", (8, 8)).save(tmp_path / name / ".thumbs" / "0.png")
    ds = ClassFolderDataset(tmp_path, lambda im: torch.zeros(1))
    assert [p.name for p, _ in ds.samples] == ["0.png", "0.png"] and [ds[i][1] for i in range(2)] == [0, 1]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["cat/0.png", "dog/0.png"]
