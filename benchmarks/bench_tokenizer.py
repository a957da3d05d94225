"""Batch tokenisation throughput: cliplab vs OpenAI's reference tokenizer (identical ids checked).

The reference is clip-anytorch's ``simple_tokenizer.py`` loaded by file path, used the way ``clip.tokenize``
uses it (encode each text, pad into a tensor). Prints a table and one JSON line.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from pathlib import Path

import torch


def _reference():
    spec = importlib.util.find_spec("clip")
    path = Path(spec.submodule_search_locations[0]) / "simple_tokenizer.py"
    mspec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.SimpleTokenizer()


ASCII = ("a photo of the red green blue small large dog cat car street in on at with two three people sitting "
         "standing near beside old new bright dark wooden metal table window sky water tree man woman child "
         "playing holding riding 42 3.5 don't it's , .").split(" ")
UNICODE = "café naïve déjà 東京 🐱 &amp; Ünïcödé “quoted”".split(" ")


def _corpus(n: int, unicode_share: float, seed: int = 0) -> list[str]:
    """Caption-like texts; ``unicode_share`` of them hold a non-ASCII word or an HTML entity."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(ASCII) for _ in range(rng.randint(5, 20))]
        if rng.random() < unicode_share:
            words[rng.randrange(len(words))] = rng.choice(UNICODE)
        out.append(" ".join(words) + rng.choice([".", "!", ""]))
    return out


def main(n: int = 20_000, repeats: int = 3) -> None:
    """Each side tokenises each corpus ``repeats`` times from a cold start (a fresh tokenizer, so no
    cache carries over); the median time counts. Set-up (loading vocabularies) is not timed."""
    import statistics

    from cliplab.tokenizer import get_tokenizer

    rows = []
    for name, share in (("captions (5% unicode)", 0.05), ("all unicode", 1.0)):
        texts = _corpus(n, share)
        t_ref, t_ours = [], []
        for _ in range(repeats):
            ref = _reference()
            sot, eot = ref.encoder["<|startoftext|>"], ref.encoder["<|endoftext|>"]
            t = time.perf_counter()
            a = torch.zeros(len(texts), 77, dtype=torch.long)
            for i, text in enumerate(texts):  # what clip.tokenize does
                ids = [sot, *ref.encode(text), eot][:77]
                a[i, : len(ids)] = torch.tensor(ids)
            t_ref.append(time.perf_counter() - t)
            ours = get_tokenizer()  # a fresh chunk cache
            ours(["warm up", "warm up café &amp;"])  # one-time set-up (the ftfy path compiles its patterns)
            from cliplab.text_clean import clean_text

            clean_text.cache_clear()
            t = time.perf_counter()
            b = ours(texts, truncate=True)
            t_ours.append(time.perf_counter() - t)
        t_ref_m, t_ours_m = statistics.median(t_ref), statistics.median(t_ours)
        rows.append({"corpus": name, "texts": n, "repeats": repeats, "reference_per_s": round(n / t_ref_m),
                     "cliplab_per_s": round(n / t_ours_m), "speedup": round(t_ref_m / t_ours_m, 2),
                     "identical": bool(torch.equal(a, b))})
    print(f"{'corpus':<24}{'OpenAI ref/s':>14}{'cliplab/s':>12}{'speedup':>9}  identical")
    for r in rows:
        print(f"{r['corpus']:<24}{r['reference_per_s']:>14}{r['cliplab_per_s']:>12}{r['speedup']:>8.1f}x"
              f"  {r['identical']}")
    print(json.dumps({"bench": "tokenizer", "rows": rows}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="texts per corpus")
    parser.add_argument("--repeats", type=int, default=3, help="cold-start runs per side; the median counts")
    args = parser.parse_args()
    main(args.n, args.repeats)
