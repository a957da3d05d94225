"""CSV, folder and shard datasets: good rows become pairs, bad ones BadSamples naming file and row."""

import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from tests.helpers import write_tar

from cliplab.cli.main import main
from cliplab.config import PreprocessConfig
from cliplab.data.batch import BadSample, collate
from cliplab.data.csv import CsvDataset
from cliplab.data.folder import FolderDataset
from cliplab.data.shards import ShardDataset, expand_urls, write_shards
from cliplab.errors import CliplabError
from cliplab.tokenizer import get_tokenizer
from cliplab.transforms import Preprocess

S = 16


@pytest.fixture(scope="module")
def transform():
    return Preprocess(PreprocessConfig(image_size=S))


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


def _image(path, colour=(200, 20, 20), size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def collection(tmp_path):
    """Three good images, one corrupt, one missing, one with an empty caption."""
    d = tmp_path / "data"
    for i in range(3):
        _image(d / "img" / f"{i}.png", colour=(60 * i, 10, 10))
    (d / "img" / "bad.png").write_bytes(b"not an image")
    rows = [
        ("img/0.png", "a dark square"),
        ("img/1.png", "a red square"),
        ("img/bad.png", "a corrupt file"),
        ("img/missing.png", "a missing file"),
        ("img/2.png", "  "),
        ("img/2.png", "a bright square"),
    ]
    (d / "data.tsv").write_text("filepath\ttitle\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return d


def test_csv_pairs_and_bad_rows(collection, transform, tokenizer):
    ds = CsvDataset(collection / "data.tsv", transform, tokenizer, sep="\t")
    items = [ds[i] for i in range(len(ds))]
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [it for it in items if isinstance(it, BadSample)]
    assert len(good) == 3 and len(bad) == 3
    assert good[0][0].shape == (3, S, S) and good[0][1].shape == (77,)
    reasons = {b.source.rsplit(":", 1)[1]: b.reason for b in bad}
    assert set(reasons) == {"4", "5", "6"}  # file lines (header is line 1)
    assert "not found" in reasons["5"] and "empty caption" in reasons["6"]
    batch = collate(items)
    assert batch.images.shape == (3, 3, S, S) and len(batch.bad) == 3
    assert torch.equal(batch.texts[1], tokenizer(["a red square"])[0])


def test_csv_header_errors(collection, transform, tokenizer):
    (collection / "tabs.csv").write_text((collection / "data.tsv").read_text())
    with pytest.raises(CliplabError, match=r"tabs\.csv.*missing column.*wrong --csv-separator"):
        CsvDataset(collection / "tabs.csv", transform, tokenizer)  # tab-separated, read with commas
    assert len(CsvDataset(collection / "data.tsv", transform, tokenizer)) == 6  # a .tsv: tabs by default
    with pytest.raises(CliplabError, match=r"missing column\(s\) \['caption'\]"):
        CsvDataset(collection / "data.tsv", transform, tokenizer, caption_key="caption", sep="\t")


def test_non_utf8_caption(tmp_path, transform, tokenizer):
    _image(tmp_path / "a.png")
    (tmp_path / "d.csv").write_bytes(b"filepath,title\na.png,caf\xe9\na.png,ok\n")
    ds = CsvDataset(tmp_path / "d.csv", transform, tokenizer)
    assert isinstance(ds[0], BadSample) and "UTF-8" in ds[0].reason and ds[0].source.endswith(":2")
    assert not isinstance(ds[1], BadSample)


def test_folder(tmp_path, transform, tokenizer):
    _image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red thing")
    _image(tmp_path / "sub" / "b.jpg")
    (tmp_path / "sub" / "b.txt").write_text("another")
    _image(tmp_path / "c.png")  # no caption file
    ds = FolderDataset(tmp_path, transform, tokenizer)
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 3
    bad = [it for it in items if isinstance(it, BadSample)]
    assert len(bad) == 1 and "c.txt" in bad[0].reason


def test_shards_round_trip(collection, tmp_path, transform, tokenizer, capsys):
    out = tmp_path / "shards"
    assert main(["shards", "--input", str(collection / "data.tsv"), "--output", str(out),
                 "--per-shard", "2", "--csv-separator", "\t"]) == 0
    msg = capsys.readouterr()
    assert "skipped 2 sample(s)" in msg.out and "missing.png" in msg.err
    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar"]
    with tarfile.open(tars[0]) as tf:
        assert len(tf.getnames()) == 4  # 2 samples × (png + txt)
    ds = ShardDataset(str(out / "{00000..00001}.tar"), transform, tokenizer, shuffle_buffer=1)
    items = list(ds)
    good = [it for it in items if not isinstance(it, BadSample)]
    bad = [it for it in items if isinstance(it, BadSample)]
    assert len(good) == 3 and len(bad) == 1 and "bad.png" not in bad[0].source  # corrupt bytes, named by key
    assert "unreadable image" in bad[0].reason


def test_shards_keep_every_image_format_a_folder_holds(tmp_path, transform, tokenizer):
    from cliplab.data.folder import IMAGE_EXTENSIONS

    files = []
    for i, ext in enumerate(IMAGE_EXTENSIONS):
        path = tmp_path / "img" / f"{i}{ext}"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (i * 30, 90, 0)).save(path)
        files.append(path)
    write_shards([(p, f"caption {p.suffix}") for p in files], tmp_path / "s", per_shard=100)
    items = list(ShardDataset(str(tmp_path / "s" / "00000.tar"), transform, tokenizer, shuffle_buffer=1))
    assert len(items) == len(IMAGE_EXTENSIONS) and not any(isinstance(it, BadSample) for it in items)


def test_shards_store_images_by_their_format_when_the_name_does_not_say(tmp_path, transform, tokenizer, capsys):
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(img / "noext", format="PNG")
    Image.new("RGB", (20, 20), (0, 200, 0)).save(img / "photo.jfif", format="JPEG")
    (img / "notes.xyz").write_text("not an image")
    (tmp_path / "data.csv").write_text("filepath,title\nimg/noext,red\nimg/photo.jfif,green\nimg/notes.xyz,x\n")
    assert main(["shards", "--input", str(tmp_path / "data.csv"), "--output", str(tmp_path / "s")]) == 0
    msg = capsys.readouterr()
    assert "skipped 1 sample(s)" in msg.out and "data.csv:4" in msg.err and "notes.xyz" in msg.err
    with tarfile.open(tmp_path / "s" / "00000.tar") as tf:
        assert sorted(n.rsplit(".", 1)[1] for n in tf.getnames()) == ["jpg", "png", "txt", "txt"]
    items = list(ShardDataset(str(tmp_path / "s" / "00000.tar"), transform, tokenizer, shuffle_buffer=1))
    assert len(items) == 2 and not any(isinstance(it, BadSample) for it in items)
    with pytest.raises(CliplabError, match=r"notes\.xyz: not a JPEG"):
        write_shards([(img / "notes.xyz", "x")], tmp_path / "t")
    capsys.readouterr()  # a second set into the same folder would mix with the first under one pattern
    assert main(["shards", "--input", str(tmp_path / "data.csv"), "--output", str(tmp_path / "s")]) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert main(["shards", "--input", str(tmp_path / "data.csv"), "--output", str(tmp_path / "s"),
                 "--prefix", "b-"]) == 0


def test_shards_split_across_ranks_without_duplicates(tmp_path, transform, tokenizer):
    imgs = [_image(tmp_path / "img" / f"{i}.png", colour=(i * 20, 0, 0)) for i in range(8)]
    write_shards([(p, f"caption {i}") for i, p in enumerate(imgs)], tmp_path / "s", per_shard=2)
    seen = []
    for rank in range(2):
        ds = ShardDataset(str(tmp_path / "s" / "{00000..00003}.tar"), transform, tokenizer,
                          shuffle_buffer=1, rank=rank, world_size=2)
        seen.append([tuple(tok[:4].tolist()) for _, tok in ds])
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1])


def test_resampled_shards_stream_forever_reproducibly(tmp_path, transform, tokenizer):
    import itertools

    imgs = [_image(tmp_path / "img" / f"{i}.png", colour=(i * 20, 0, 0)) for i in range(8)]
    write_shards([(p, f"caption {i}") for i, p in enumerate(imgs)], tmp_path / "s", per_shard=2)

    def first(rank, n=20):
        ds = ShardDataset(str(tmp_path / "s" / "{00000..00003}.tar"), transform, tokenizer, shuffle_buffer=1,
                          resampled=True, rank=rank, world_size=2)
        return [tuple(tok[:4].tolist()) for _, tok in itertools.islice(ds, n)]

    a = first(0)
    assert len(a) == 20 and len(set(a)) <= 8  # more samples than the shards hold: drawn with replacement
    assert a == first(0)  # the same stream again (a resumed run replays it)
    assert a != first(1)  # each rank draws its own


def test_missing_shard(tmp_path):
    with pytest.raises(CliplabError, match=r"shard .*00000\.tar not found \(2 of 2 missing\)"):
        expand_urls(str(tmp_path / "{00000..00001}.tar"))


def test_shard_position_is_exact_when_workers_hold_unequal_shares(tmp_path):
    """3 shards of 16 over 2 workers (32 and 16 samples), batches of 6: partial batches and one worker
    running dry. A stream rebuilt from any saved position goes on exactly as the uninterrupted one."""
    from cliplab.data.loader import build_train_data
    from cliplab.train.config import DataConfig

    imgs = [_image(tmp_path / "img" / f"{i}.png") for i in range(48)]
    write_shards([(p, f"caption {i}") for i, p in enumerate(imgs)], tmp_path / "s", per_shard=16)

    def tok(caps, truncate=True):
        return torch.tensor([[int(c.split()[-1])] for c in caps])  # (B, 1): the sample's number

    def transform(image):
        return torch.zeros(3, 2, 2)

    cfg = DataConfig(format="wds", train_data=str(tmp_path / "s" / "{00000..00002}.tar"), workers=2,
                     shuffle_buffer=4)
    full = build_train_data(cfg, transform, tok, 6, seed=0)
    seen, positions = [], []
    for _ in range(12):  # past the end of the first epoch
        positions.append(full.position())
        seen.append(next(full.batches).texts[:, 0].tolist())
    assert sum(len(b) for b in seen[:9]) == 48 and len({i for b in seen[:9] for i in b}) == 48  # epoch 1
    full.close()
    for at in (3, 7, 8, 10):
        again = build_train_data(cfg, transform, tok, 6, seed=0, start_step=at, position=positions[at])
        assert [next(again.batches).texts[:, 0].tolist() for _ in range(12 - at)] == seen[at:], at
        again.close()


@pytest.mark.parametrize("fmt", ["wds", "csv", "synthetic"])
def test_closing_the_data_ends_its_workers_at_once(tmp_path, fmt):
    """Left to the garbage collector, an unfinished loader's workers lingered and stalled a later run in the
    same process by seconds; ``close`` ends them when the run ends."""
    import multiprocessing

    from cliplab.data.loader import build_train_data
    from cliplab.train.config import DataConfig

    imgs = [_image(tmp_path / "img" / f"{i}.png") for i in range(8)]
    write_shards([(p, f"caption {i}") for i, p in enumerate(imgs)], tmp_path / "s", per_shard=4)
    (tmp_path / "d.csv").write_text("filepath,title\n" + "".join(f"img/{i}.png,caption {i}\n" for i in range(8)))
    source = {"wds": str(tmp_path / "s" / "{00000..00001}.tar"), "csv": str(tmp_path / "d.csv"), "synthetic": None}
    cfg = DataConfig(format=fmt, train_data=source[fmt], workers=2)
    before = set(multiprocessing.active_children())
    data = build_train_data(cfg, Preprocess(PreprocessConfig(image_size=S)), get_tokenizer(), 2, seed=0,
                            image_size=S)
    next(data.batches)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    data.close()
    assert not any(w.is_alive() for w in workers)


def test_shards_that_do_not_split_evenly_over_ranks_are_said(tmp_path, transform, tokenizer):
    from cliplab.errors import CliplabWarning

    imgs = [_image(tmp_path / "img" / f"{i}.png") for i in range(3)]
    write_shards([(p, f"caption {i}") for i, p in enumerate(imgs)], tmp_path / "s", per_shard=1)
    with pytest.warns(CliplabWarning, match="3 shards over 2 processes"):
        ShardDataset(str(tmp_path / "s" / "{00000..00002}.tar"), transform, tokenizer, rank=0, world_size=2)


def test_tsv_suffix_means_tabs_by_default(tmp_path):
    from cliplab.data.csv import read_rows

    (tmp_path / "d.tsv").write_text("filepath\ttitle\na.png\ta photo, with a comma\n")
    rows, lines = read_rows(tmp_path / "d.tsv", ["filepath", "title"])
    assert rows == [["a.png", "a photo, with a comma"]] and lines == [2]


def test_a_quote_left_open_is_an_error_naming_its_line(tmp_path):
    from cliplab.data.csv import read_rows

    (tmp_path / "d.csv").write_text('filepath,title\na.png,fine\nb.png,"never closed\nc.png,x\nd.png,y\n')
    with pytest.raises(CliplabError, match=r"d\.csv:3: malformed CSV .*never closed"):
        read_rows(tmp_path / "d.csv", ["filepath", "title"])
    (tmp_path / "e.csv").write_text('filepath,title\na.png,"a ""quoted"" word"\nb.png,"two\nlines"\n')
    rows, lines = read_rows(tmp_path / "e.csv", ["filepath", "title"])
    # a row is named by the line it starts on
    assert rows == [["a.png", 'a "quoted" word'], ["b.png", "two\nlines"]] and lines == [2, 3]


def test_a_tsv_caption_opening_with_a_quote_mark_is_text(tmp_path):
    """A TSV whose caption starts with a quote mark failed as a whole; tab-separated files seldom quote, so
    its quote marks are then read as text, with a warning naming the line. Well-formed quoting still parses."""
    from cliplab.data.csv import read_rows
    from cliplab.errors import CliplabWarning

    caps = ['"Best friends" on a beach', "a red square", '5" screen', 'a sign saying "open"']
    (tmp_path / "d.tsv").write_text("filepath\ttitle\n" + "".join(f"{i}.png\t{c}\n" for i, c in enumerate(caps)))
    with pytest.warns(CliplabWarning, match=r"d\.tsv:2: malformed CSV .*quote marks as text"):
        rows, lines = read_rows(tmp_path / "d.tsv", ["filepath", "title"], "\t")
    assert [r[1] for r in rows] == caps and lines == [2, 3, 4, 5]
    (tmp_path / "e.tsv").write_text('filepath\ttitle\na.png\t"a ""quoted"" word"\n')  # as pandas writes it
    assert read_rows(tmp_path / "e.tsv", ["filepath", "title"])[0] == [["a.png", 'a "quoted" word']]


def test_json_captions_must_be_strings_and_broken_shards_are_named(tmp_path, transform, tokenizer):
    import io

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(buf, format="PNG")
    png = buf.getvalue()
    metas = {"a": {"caption": None, "text": "the text"}, "b": {"caption": ["x", "y"]},
             "c": {"caption": "", "text": "t"}, "d": [1, 2], "e": {"caption": 3}}
    members = {}
    for key, meta in metas.items():
        members.update({f"{key}.png": png, f"{key}.json": __import__("json").dumps(meta).encode()})
    write_tar(tmp_path / "00000.tar", members)
    (tmp_path / "00001.tar").write_bytes(bytes(range(256)) * 40)  # not a tar at all
    write_tar(tmp_path / "00002.tar", {"f.png": png, "f.txt": b"fine"})
    (tmp_path / "00002.tar").write_bytes((tmp_path / "00002.tar").read_bytes()[:700])  # truncated
    ds = ShardDataset(str(tmp_path / "{00000..00002}.tar"), transform, tokenizer, shuffle_buffer=1)
    items = list(ds)
    good = {tuple(it[1][:4].tolist()) for it in items if not isinstance(it, BadSample)}
    assert good == {tuple(tokenizer([t])[0][:4].tolist()) for t in ("the text", "t")}
    bad = [it for it in items if isinstance(it, BadSample)]
    by_key = {b.source.rsplit("/", 1)[-1]: b.reason for b in bad if "00000.tar" in b.source}
    assert set(by_key) == {"b", "d", "e"} and all("holding a string" in r for r in by_key.values())
    broken = {(Path(b.source).name, b.reason) for b in bad if b.source.endswith(".tar")}
    assert broken == {("00001.tar", "unreadable tar data (invalid header)"),
                      ("00002.tar", "unreadable tar data (unexpected end of data)")}


def test_shards_refuse_a_folder_and_an_input_without_pairs(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(CliplabError, match="a folder, not a tar shard"):
        expand_urls(str(tmp_path / "imgs"))
    assert main(["shards", "--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "out")]) == 2
    assert "no usable image-caption pairs" in capsys.readouterr().err


def test_a_pinned_batch_keeps_its_bookkeeping(monkeypatch):
    """DataLoader(pin_memory=True), used when training on CUDA, pins a Batch through its own method."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from cliplab.data.batch import Batch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t.shape) or t.clone())
    batch = Batch(torch.zeros(2, 3, 4, 4), torch.ones(2, 5, dtype=torch.long), [BadSample("x.jpg", "bad")], worker=1)
    out = pin_memory(batch)
    assert isinstance(out, Batch) and out.worker == 1 and out.bad == batch.bad
    assert pinned == [(2, 3, 4, 4), (2, 5)] and torch.equal(out.texts, batch.texts)


def test_an_unfinished_set_of_shards_is_refused_then_replaced(tmp_path, transform, tokenizer, capsys):
    """A `cliplab shards` run that stops part-way (a bad file here, a kill in general) leaves its marker: the
    reader refuses the partial set, and the next run replaces it."""
    imgs = [_image(tmp_path / "img" / f"{i}.png", colour=(i * 40, 0, 0)) for i in range(5)]
    (tmp_path / "img" / "notes.xyz").write_text("not an image")
    out = tmp_path / "s"
    with pytest.raises(CliplabError, match=r"notes\.xyz: not a JPEG"):
        write_shards([*[(p, f"caption {i}") for i, p in enumerate(imgs)], (tmp_path / "img" / "notes.xyz", "x")],
                     out, per_shard=2)
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "shards.incomplete"]
    with pytest.raises(CliplabError, match=r"00000\.tar: written by a `cliplab shards` run that did not finish"):
        ShardDataset(str(out / "{00000..00001}.tar"), transform, tokenizer)
    written = write_shards([(p, f"caption {i}") for i, p in enumerate(imgs[:3])], out, per_shard=1)
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "00002.tar"] == [p.name for p in written]
    items = list(ShardDataset(str(out / "{00000..00002}.tar"), transform, tokenizer, shuffle_buffer=1))
    assert len(items) == 3 and not any(isinstance(it, BadSample) for it in items)
    # another prefix's marker in the same folder says nothing about these shards
    (out / "b-shards.incomplete").touch()
    assert len(ShardDataset(str(out / "00000.tar"), transform, tokenizer).urls) == 1


def test_a_row_spanning_lines_is_named_by_its_first_line_and_a_huge_caption_is_one_row(tmp_path):
    from cliplab.data.csv import read_rows

    path = tmp_path / "lines.csv"
    path.write_text('filepath,title\na.png,"a caption\nover\nthree lines"\n\nb.png,' + "x" * 200_000 + "\n")
    rows, lines = read_rows(path, ["filepath", "title"])
    assert lines == [2, 6] and rows[0] == ["a.png", "a caption\nover\nthree lines"] and len(rows[1][1]) == 200_000


def test_each_epoch_deals_the_shards_anew(tmp_path, transform, tokenizer):
    """Split before shuffling, each rank (and worker) would read the same shards every epoch."""
    imgs = [_image(tmp_path / "img" / f"{i}.png", colour=(i * 20, 0, 0)) for i in range(8)]
    write_shards([(p, f"caption {i}") for i, p in enumerate(imgs)], tmp_path / "s", per_shard=1)
    deals = []
    for epoch in range(4):
        per_rank = []
        for rank in range(2):
            ds = ShardDataset(str(tmp_path / "s" / "{00000..00007}.tar"), transform, tokenizer, shuffle_buffer=1,
                              rank=rank, world_size=2)
            ds.set_epoch(epoch)
            per_rank.append(frozenset(tuple(tok[:4].tolist()) for _, tok in ds))
        assert len(per_rank[0]) == len(per_rank[1]) == 4 and not per_rank[0] & per_rank[1]
        deals.append(per_rank[0])
    assert len(set(deals)) > 1


def test_more_shards_than_five_digit_names_hold_are_refused(tmp_path, monkeypatch):
    import cliplab.data.shards as shards

    monkeypatch.setattr(shards, "MAX_SHARDS", 2)
    imgs = [_image(tmp_path / "img" / f"{i}.png") for i in range(5)]
    pairs = [(p, f"caption {i}") for i, p in enumerate(imgs)]
    with pytest.raises(CliplabError, match="more than 2 shards of 2; give a larger --per-shard"):
        write_shards(pairs, tmp_path / "a", per_shard=2)  # known length: refused before writing
    assert not (tmp_path / "a").exists()
    with pytest.raises(CliplabError, match="more than 2 shards of 2 samples; give a larger --per-shard"):
        write_shards(iter(pairs), tmp_path / "b", per_shard=2)  # a stream: refused at the third shard
    with pytest.raises(CliplabError, match="did not finish"):  # and the partial set is never read
        expand_urls(str(tmp_path / "b" / "{00000..00001}.tar"))
