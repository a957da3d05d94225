"""The end of a run: ``summary.json``, the curves figure and the closing line."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from cliplab.fileio import write_json

__all__ = ["finish"]


def _distinct_sources(path: Path) -> int:
    """How many different samples a run's bad-sample log names (one may be met once an epoch)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    sources = set()
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            sources.add(json.loads(line)["source"])
    return len(sources)


def finish(run_dir: Path, history: list[dict[str, Any]], bad: int, steps: int, seconds: float,
           progress: bool, dropped: int = 0) -> None:
    """Write ``summary.json`` (``bad_samples`` counts skips, ``bad_distinct`` the samples skipped) and
    ``curves.png``, and print the closing line."""
    distinct = _distinct_sources(run_dir / "bad_samples.jsonl")
    final = next((h["loss"] for h in reversed(history) if h.get("loss") is not None), None)  # JSON has no NaN
    summary = {"steps": steps, "seconds": round(seconds, 1), "bad_samples": bad, "bad_distinct": distinct,
               "dropped_pairs": dropped, "final_loss": final}
    write_json(run_dir / "summary.json", summary)
    if history:
        from cliplab.train.curves import plot_curves

        try:
            plot_curves(history, run_dir / "curves.png")
        except ModuleNotFoundError as err:  # matplotlib comes with the [train] extra
            if not (err.name or "").startswith("matplotlib"):
                raise
            print("note: matplotlib is not installed, so no curves.png (pip install 'cliplab[train]')", flush=True)
    if progress:
        times = f" ({distinct} distinct, met again in later epochs)" if distinct and distinct < bad else ""
        note = f"; skipped {bad} bad sample(s){times}, listed in {run_dir / 'bad_samples.jsonl'}" if bad else ""
        if dropped:
            note += (f"; left out {dropped} good pair(s): in batches with fewer than 2 usable pairs or, with several "
                     "processes, so that every process's share of a batch was equal")
        loss = "" if summary["final_loss"] is None else f", final loss {summary['final_loss']}"
        print(f"done: {steps} steps in {seconds:.0f} s{loss}{note}", flush=True)
