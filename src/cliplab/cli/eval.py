"""``cliplab eval``: zero-shot classification, image↔text retrieval and linear probes on a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cliplab.cli.args import count, counts


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="anything cliplab.load accepts")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--workers", type=count(0), default=0, help="DataLoader workers decoding images")
    p.add_argument("--device", default="auto")
    p.add_argument("--output-json", "--output", dest="output", help="write the report as JSON here (atomically)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.add_argument("--csv-img-key", default="filepath")
    p.add_argument("--csv-separator", default=",")
    p.add_argument("--on-bad-sample", choices=("skip", "error"), default="skip",
                   help="an unreadable or missing image: left out, counted and listed in the report (skip), or "
                        "the end of the run (error)")


def _labelled(p: argparse.ArgumentParser, flag: str = "--data", help_: str = "labelled images") -> None:
    p.add_argument(flag, required=True, help=f"{help_}: a folder of class sub-folders, or a CSV")
    p.add_argument("--csv-label-key", default="label")
    p.add_argument("--classnames", help="class names: a file, or a built-in set (imagenet)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: zero-shot, retrieval, linear probe")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True

    z = tasks.add_parser("zeroshot", help="zero-shot classification with prompt ensembles")
    _common(z)
    _labelled(z)
    z.add_argument("--templates", default="openai-imagenet", help="built-in set (openai-imagenet, simple) or file")
    z.add_argument("--confusion-png", help="also plot the confusion matrix here")
    z.add_argument("--save-classifier", help="write the zero-shot classifier (safetensors)")
    z.add_argument("--load-classifier", help="use a classifier saved with --save-classifier (skips the prompts)")
    z.set_defaults(func=run_zeroshot)

    r = tasks.add_parser("retrieval", help="image↔text Recall@K on a CSV of (image, caption) rows")
    _common(r)
    r.add_argument("--data", required=True, help="CSV; rows sharing an image path are captions of one image, "
                   "and a caption cell may hold a JSON list of captions")
    r.add_argument("--csv-caption-key", default="title")
    r.add_argument("--ks", type=count(1), nargs="+", default=[1, 5, 10])
    r.set_defaults(func=run_retrieval)

    lp = tasks.add_parser("linear-probe", help="logistic-regression probe on frozen image embeddings")
    _common(lp)
    _labelled(lp, "--train", "training images")
    lp.add_argument("--test", required=True, help="test images (same layout as --train)")
    lp.add_argument("--shots", type=counts, nargs="+", help="also run k-shot probes for these k: 1,2,4,8,16")
    lp.add_argument("--seeds", type=count(0), nargs="+", default=[0, 1, 2], help="of the k-shot samples")
    lp.set_defaults(func=run_linear_probe)


def _dataset(path: str, args: argparse.Namespace, preprocess: Any) -> Any:
    from cliplab.eval.datasets import ClassFolderDataset, LabelCsvDataset
    from cliplab.eval.prompts import load_classnames

    names = load_classnames(args.classnames, keyed=True) if args.classnames else None
    if Path(path).is_dir():
        return ClassFolderDataset(path, preprocess, classnames=names)
    return LabelCsvDataset(path, preprocess, img_key=args.csv_img_key, label_key=args.csv_label_key,
                           sep=args.csv_separator, classnames=names)


_OUTPUTS = ("output", "confusion_png", "save_classifier")
_INPUTS = ("checkpoint", "data", "train", "test", "load_classifier", "classnames", "templates")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _input_paths(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(flag, resolved path) of every input named by an existing path (not a built-in set's name)."""
    from cliplab.eval.prompts import BUILTIN_CLASSNAMES, BUILTIN_TEMPLATES

    builtin = {"classnames": BUILTIN_CLASSNAMES, "templates": BUILTIN_TEMPLATES}
    paths = []
    for dest in _INPUTS:
        value = getattr(args, dest, None)
        if value and value not in builtin.get(dest, ()) and Path(value).exists():
            paths.append((_flag(dest), Path(value).resolve()))
    return paths


def _check_not_an_input(out: str, flag: str, inputs: list[tuple[str, Path]]) -> None:
    """An output replaces none of the run's inputs, nor writes into an input folder (a checkpoint's files,
    a class folder's images)."""
    import os

    from cliplab.errors import CliplabError

    target = Path(out).resolve()
    for in_flag, src in inputs:
        if target == src or (target.exists() and os.path.samefile(target, src)):
            raise CliplabError(f"{out}: is the {in_flag} input; write {flag} elsewhere")
        if src.is_dir() and target.is_relative_to(src):
            raise CliplabError(f"{out}: is inside the {in_flag} folder {src}; write {flag} elsewhere")


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work: every file the run will write (--output-json, --confusion-png, --save-classifier) can
    be written where it is asked for, replaces none of the inputs nor another output, so a finished
    evaluation is never lost to a bad path."""
    from cliplab.errors import CliplabError

    inputs, written = _input_paths(args), {}
    for dest in _OUTPUTS:
        path = getattr(args, dest, None)
        if not path:
            continue
        target = Path(path)
        if target.is_dir():
            raise CliplabError(f"{path}: is a directory (give a file name to write)")
        parent = next((p for p in target.parents if p.exists()), Path("."))
        if not parent.is_dir():
            raise CliplabError(f"{path}: {parent} is a file, not a folder")
        _check_not_an_input(path, _flag(dest), inputs)
        if target.resolve() in written:
            raise CliplabError(f"{path}: given to both {written[target.resolve()]} and {_flag(dest)}; one would "
                               "replace the other")
        written[target.resolve()] = _flag(dest)


def _skipped(report: dict[str, Any], lines: list[str], *batches: Any) -> None:
    """Add the images left out as unreadable to the report (all of them) and to the printed lines (a few)."""
    import sys

    bad = [b for batch in batches for b in batch.skipped]
    report["skipped"] = len(bad)
    report["skipped_samples"] = [{"source": b.source, "reason": b.reason} for b in bad]
    if bad:
        lines.append(f"skipped {len(bad)} unreadable or missing image(s), not counted in the figures above "
                     "(all listed in --json / --output-json):")
        shown = [f"  {b.reason}" for b in bad[:5]] + ([f"  ... and {len(bad) - 5} more"] if len(bad) > 5 else [])
        print("\n".join(shown), file=sys.stderr)


def _report(args: argparse.Namespace, report: dict[str, Any], lines: list[str]) -> int:
    from cliplab.fileio import write_json

    print("\n".join(lines))
    if args.json:
        print(json.dumps(report))
    if args.output:
        write_json(args.output, report)
    return 0


def run_zeroshot(args: argparse.Namespace) -> int:
    import cliplab
    from cliplab.eval.datasets import make_loader
    from cliplab.eval.plots import plot_confusion
    from cliplab.eval.zeroshot import (
        resolve_templates,
        save_classifier,
        text_fingerprint,
        zero_shot_classifier,
        zero_shot_evaluate,
    )

    _check_outputs(args)
    if args.confusion_png:
        _check_figure_path(args.confusion_png)
    templates = None if args.load_classifier else resolve_templates(args.templates)  # a loaded one has its own
    model, preprocess, tokenizer = cliplab.load(args.checkpoint, device=args.device)
    device = next(model.parameters()).device
    ds = _dataset(args.data, args, preprocess)
    if templates is None:
        from cliplab.errors import CliplabError
        from cliplab.eval.zeroshot import load_classifier

        saved = load_classifier(args.load_classifier)
        if list(saved.classnames) != list(ds.classnames):
            raise CliplabError(f"{args.load_classifier}: built for classes {_short(saved.classnames)}, but "
                               f"{args.data} has {_short(ds.classnames)}")
        if saved.weights.shape[0] != model.cfg.embed_dim:
            raise CliplabError(f"{args.load_classifier}: {saved.weights.shape[0]}-d class weights for a model "
                               f"with {model.cfg.embed_dim}-d embeddings")
        if saved.text_fingerprint not in (None, text_fingerprint(model)):
            raise CliplabError(f"{args.load_classifier}: built with another text tower than {args.checkpoint}'s; "
                               "build it again from this model (drop --load-classifier)")
        classifier, templates = saved.weights.to(device), list(saved.templates)
    else:
        classifier = zero_shot_classifier(model, tokenizer, ds.classnames, templates, device=device)
    if args.save_classifier:
        save_classifier(args.save_classifier, classifier, ds.classnames, templates, text_fingerprint(model))
    batches = make_loader(ds, args.batch_size, args.workers, on_bad=args.on_bad_sample)
    result = zero_shot_evaluate(model, classifier, batches, device=device, classnames=ds.classnames)
    report = {"task": "zeroshot", "checkpoint": str(args.checkpoint), "data": str(args.data),
              "templates": len(templates), **result.to_dict(ds.classnames)}
    lines = [
        f"{result.n} images, {result.num_classes} classes, {len(templates)} templates",
        f"top-1 {100 * result.top1:.2f} %  top-5 {100 * result.top5:.2f} %  "
        f"mean per-class recall {100 * result.mean_per_class_recall:.2f} %",
        *_per_class_table(result.per_class(ds.classnames)),
    ]
    _skipped(report, lines, batches)
    code = _report(args, report, lines)
    if args.confusion_png:  # after the report: a figure never costs the numbers
        plot_confusion(result, ds.classnames, args.confusion_png)
    return code


def _short(names: list[str], n: int = 4) -> str:
    return f"{names[:n]}{' ...' if len(names) > n else ''} ({len(names)})"


def _check_figure_path(path: str) -> None:
    """Before any work: a format matplotlib can write (by the file's extension; none means PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cliplab.errors import CliplabError

    ext = Path(path).suffix.lower().lstrip(".")
    formats = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if ext and ext not in formats:
        raise CliplabError(f"{path}: cannot write a .{ext} figure (use one of {', '.join(sorted(formats))})")


def _per_class_table(rows: list[dict[str, Any]], limit: int = 40) -> list[str]:
    """The per-class recall table; beyond ``limit`` classes, the worst ``limit`` (all are in the JSON)."""
    shown = rows if len(rows) <= limit else sorted(
        (r for r in rows if r["recall"] is not None), key=lambda r: r["recall"])[:limit]
    width = max(len("class"), *(len(r["name"]) for r in shown))
    head = "per-class recall" + ("" if len(shown) == len(rows) else f" (the {limit} lowest of {len(rows)}; "
                                                                   "all in --json / --output-json)")
    out = [head, f"  {'class':<{width}}  support  correct  recall"]
    for r in shown:
        recall = "-" if r["recall"] is None else f"{100 * r['recall']:.1f} %"
        out.append(f"  {r['name']:<{width}}  {r['support']:>7}  {r['correct']:>7}  {recall:>7}")
    return out


def _encode_images(model: Any, paths: list[Any], sources: list[str], preprocess: Any, args: argparse.Namespace,
                   device: Any) -> Any:
    """Normalised embeddings (Nk, D) on the CPU of the images that could be read, and the batches (whose
    ``kept`` numbers those images and ``skipped`` lists the others by ``sources[i]``, their CSV row). With
    --on-bad-sample error, a missing or broken image is a one-line error, with any number of workers."""
    import torch

    from cliplab.errors import CliplabError
    from cliplab.eval.datasets import ImageListDataset, make_loader

    batches = make_loader(ImageListDataset(paths, sources, preprocess), args.batch_size, args.workers,
                          on_bad=args.on_bad_sample)
    with torch.no_grad():
        emb = [model.encode_image(x.to(device), normalize=True).float().cpu() for x in batches]
    if not emb:
        raise CliplabError(f"{args.data}: none of the {len(paths)} images could be read "
                           f"(the first: {batches.skipped[0].reason})")
    return torch.cat(emb), batches


def _captions(cell: str, where: str) -> list[str]:
    """A caption cell: one caption, or a JSON list of them (several captions of one image in one row)."""
    from cliplab.errors import CliplabError

    text = cell.strip()
    if not text.startswith("["):
        return [text] if text else []
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return [text]  # a caption that merely starts with "["
    if not isinstance(items, list) or not all(isinstance(c, str) and c.strip() for c in items):
        raise CliplabError(f"{where}: a caption list must hold non-empty strings")
    return [c.strip() for c in items]


def run_retrieval(args: argparse.Namespace) -> int:
    import os

    import torch

    import cliplab
    from cliplab.data.csv import read_rows
    from cliplab.errors import CliplabError
    from cliplab.eval.datasets import check_utf8
    from cliplab.eval.retrieval import retrieval_metrics
    from cliplab.model.text_transformer import batches_by_length

    _check_outputs(args)
    model, preprocess, tokenizer = cliplab.load(args.checkpoint, device=args.device)
    device = next(model.parameters()).device
    rows, lines = read_rows(args.data, [args.csv_img_key, args.csv_caption_key], args.csv_separator)
    if not rows:
        raise CliplabError(f"{args.data}: no data rows")
    index: dict[str, int] = {}  # normalised image path -> image number
    sources: list[str] = []  # per image: the CSV row that first lists it
    captions, owners = [], []  # every caption, and its image's number
    for (image, cell), line in zip(rows, lines, strict=True):
        where = f"{args.data}:{line}"
        check_utf8(cell, where, "caption")
        texts = _captions(cell, where)
        if not image.strip() or not texts:
            raise CliplabError(f"{where}: empty image path or caption")
        key = os.path.normpath(image.strip())
        if key not in index:
            index[key] = len(index)
            sources.append(where)
        captions += texts
        owners += [index[key]] * len(texts)
    root = Path(args.data).parent
    image_emb, batches = _encode_images(model, [root / p for p in index], sources, preprocess, args, device)
    if batches.skipped:  # an unreadable image leaves with its captions; the rest are numbered anew
        renumber = {old: new for new, old in enumerate(batches.kept)}
        pairs = [(c, renumber[o]) for c, o in zip(captions, owners, strict=True) if o in renumber]
        captions, owners = [c for c, _ in pairs], [o for _, o in pairs]
    # each distinct caption embedded once: one text on several images gets one vector, so its scores tie
    # exactly whatever the batching (retrieval's tie rule depends on that)
    position: dict[str, int] = {}
    of_caption = torch.tensor([position.setdefault(c, len(position)) for c in captions])  # (Nt,)
    distinct = list(position)
    long = [len(tokenizer.encode(c)) + 2 > tokenizer.context_length for c in distinct]
    cut = sum(long[i] for i in of_caption.tolist())
    tokens = tokenizer(distinct, truncate=True)  # (Nd, L): long captions cut, as OpenAI's and open_clip's evals do
    distinct_emb = torch.empty(len(distinct), model.cfg.embed_dim)  # (Nd, D)
    with torch.no_grad():
        for batch in batches_by_length(tokens, args.batch_size):
            distinct_emb[batch] = model.encode_text(tokens[batch].to(device), normalize=True).float().cpu()
    text_emb = distinct_emb[of_caption]  # (Nt, D)
    t2i = torch.tensor(owners)
    metrics = retrieval_metrics(image_emb, text_emb, t2i, ks=args.ks)
    report = {"task": "retrieval", "checkpoint": str(args.checkpoint), "data": str(args.data),
              "truncated_captions": cut, **metrics}
    out = [f"{len(batches.kept)} images, {len(captions)} captions"
           + (f" ({cut} cut to the model's {tokenizer.context_length} tokens)" if cut else "")]
    for name in ("image_to_text", "text_to_image"):
        recalls = "  ".join(f"R@{k} {100 * metrics[f'{name}_R@{k}']:.2f}" for k in args.ks)
        out.append(f"{name}: {recalls}  median rank {metrics[f'{name}_median_rank']:g}")
    _skipped(report, out, batches)
    return _report(args, report, out)


def _to_train_labels(labels: Any, test_classes: list[str], train_classes: list[str]) -> Any:
    """Test labels renumbered as the training set numbers its classes (the two sets number their own class
    folders or CSV labels); every test class that has samples must be a training class (-1 marks the others,
    which no label refers to)."""
    import torch

    where = {name: i for i, name in enumerate(train_classes)}
    table = torch.tensor([where.get(name, -1) for name in test_classes])  # (C_test,)
    return table[labels]  # (N,)


def _probe_classes(args: argparse.Namespace, train: Any, test: Any) -> tuple[list[str], list[str]]:
    """What matches a test class to a training class: the class names when --classnames names both sets'
    classes (WordNet-id folders for training, a CSV of indices for testing) and no name is listed twice;
    else the folder names or CSV labels themselves."""
    by_name = args.classnames is not None and all(len(set(d.classnames)) == len(d.classnames) for d in (train, test))
    return (train.classnames, test.classnames) if by_name else (train.classes, test.classes)


def _check_probe_classes(args: argparse.Namespace, train: Any, test: Any) -> None:
    """Every class the test set has images of needs training images; classes with no images (an empty class
    folder) are left out on both sides, by name."""
    from cliplab.errors import CliplabError
    from cliplab.eval.datasets import classes_with_samples

    train_keys, test_keys = _probe_classes(args, train, test)
    trained = classes_with_samples(train, train_keys)
    missing = [name for name in classes_with_samples(test, test_keys) if name not in set(trained)]
    if missing:
        how = "class names (--classnames)" if train_keys is train.classnames else "folder names or CSV labels"
        raise CliplabError(f"{args.test}: test classes with no training images: {_short(missing)}; the training "
                           f"set has images of {_short(trained)} (classes are matched by their {how})")


def _shots(args: argparse.Namespace) -> list[int]:
    """The k of the k-shot probes (none without --shots); --shots with no k is a mistake, not "none"."""
    from cliplab.errors import CliplabError

    shots = sorted({k for group in args.shots or [] for k in group})
    if args.shots is not None and not shots:
        raise CliplabError("--shots: no k given (e.g. --shots 1,2,4,8,16)")
    return shots


def run_linear_probe(args: argparse.Namespace) -> int:
    import cliplab
    from cliplab.eval.datasets import make_loader
    from cliplab.eval.linear_probe import extract_features, few_shot_probe, linear_probe

    _check_outputs(args)
    shots = _shots(args)
    model, preprocess, _ = cliplab.load(args.checkpoint, device=args.device)
    device = next(model.parameters()).device
    train, test = _dataset(args.train, args, preprocess), _dataset(args.test, args, preprocess)
    _check_probe_classes(args, train, test)
    train_batches = make_loader(train, args.batch_size, args.workers, on_bad=args.on_bad_sample)
    test_batches = make_loader(test, args.batch_size, args.workers, on_bad=args.on_bad_sample)
    xtr, ytr = extract_features(model, train_batches, device)
    xte, yte = extract_features(model, test_batches, device)
    train_keys, test_keys = _probe_classes(args, train, test)
    yte = _to_train_labels(yte, test_keys, train_keys)
    res = linear_probe(xtr, ytr, xte, yte)
    report: dict[str, Any] = {"task": "linear-probe", "checkpoint": str(args.checkpoint), "accuracy": res.accuracy,
                              "C": res.c, "val_accuracy": res.val_accuracy, "n_train": res.n_train,
                              "n_test": res.n_test, "searched": {str(k): v for k, v in res.searched.items()}}
    out = [f"linear probe: accuracy {100 * res.accuracy:.2f} % (C = {res.c:.3g}, "
           f"{res.n_train} train / {res.n_test} test)"]
    if res.val_accuracy is None:
        out.append("note: some class has a single training image, so no validation split was possible and C was "
                   f"not searched (fixed at {res.c:g})")
    if shots:
        few = few_shot_probe(xtr, ytr, xte, yte, shots=shots, seeds=args.seeds)
        report["few_shot"] = few.rows()
        rows = zip(few.shots, few.mean, few.std, strict=True)
        out += [f"{k}-shot: {100 * m:.2f} ± {100 * s:.2f} %" for k, m, s in rows]
    _skipped(report, out, train_batches, test_batches)
    json.dumps(report)  # fail here, not half-way through writing, if something is not serialisable
    return _report(args, report, out)
