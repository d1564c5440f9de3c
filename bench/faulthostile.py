"""The hostile-corpus part of bench/faults.py: `index` over malformed and odd files.

One `index` over the whole corpus (the goal figures), one over the ordinary photos alone (the
memory reference) and, on request, one per family (so that one family's crash does not hide what
the others do); then `status --json`, matched to the corpus by the files' `fNNNN_` tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from common import SHARED_DATA
from faultcorpus import build_hostile, token_number
from faultlib import TIMEOUT, TINY_MODEL, read_state, run_cli


def run_hostile(root: Path, *, cuts: int, good: int, flickr: int, workers: int,
                memory_cap_mb: float, memory_margin_mb: float, per_family: bool) -> dict:
    """`index` over the whole hostile corpus, then `status --json`: crashes, memory, bad files
    not listed, good files not indexed. Peak memory is compared with an `index` of the ordinary
    photos alone. With `per_family`, each family is also indexed on its own (so that one
    family's crash does not hide what the others do)."""
    corpus = root / "corpus"
    items = build_hostile(corpus, cuts=cuts, good=good)
    real = _flickr_photos(corpus / "real", flickr)
    options = {"workers": workers, "memory_cap_mb": memory_cap_mb}
    whole = _index_corpus(corpus, root / "home-whole", **options)
    reference = _index_corpus(corpus / "good", root / "home-good", **options)
    result = {
        "files": len(items) + len(real),
        "good": sum(i.expect == "good" for i in items) + len(real),
        "bad": sum(i.expect == "bad" for i in items),
        "either": sum(i.expect == "either" for i in items),
        **_score(items, whole, len(real)),
        "peak_rss_mb": whole["peak_rss_mb"],
        "reference_peak_rss_mb": reference["peak_rss_mb"],
        "memory_over_bound": int(
            whole["peak_rss_mb"] > reference["peak_rss_mb"] + memory_margin_mb
        ),
        "memory_margin_mb": memory_margin_mb,
        "seconds": whole["seconds"],
        "index_run": whole["index_run"],
        "status_run": whole["status_run"],
    }
    if per_family:
        families = {}
        for family in sorted({i.family for i in items}):
            alone = _index_corpus(corpus / family, root / f"home-{family}", **options)
            chosen = [i for i in items if i.family == family]
            families[family] = {
                "files": len(chosen),
                **{k: v for k, v in _score(chosen, alone, 0).items() if k != "examples"},
                "peak_rss_mb": alone["peak_rss_mb"],
                "memory_over_bound": int(
                    alone["peak_rss_mb"] > reference["peak_rss_mb"] + memory_margin_mb
                ),
                "seconds": alone["seconds"],
                "message": alone["index_run"]["message"][-200:],
            }
            print(f"  {family}: {_family_line(families[family])}", flush=True)
        result["families_alone"] = families
    return result


def _family_line(figures: dict) -> str:
    names = ("crashes", "bad_unlisted", "either_unaccounted", "good_missing", "peak_rss_mb",
             "memory_over_bound")
    return ", ".join(f"{name} {figures[name]}" for name in names)


def _index_corpus(folder: Path, home: Path, *, workers: int, memory_cap_mb: float) -> dict:
    """`index FOLDER` into a new home with the memory watched, then `status --json`."""
    run = run_cli(
        ["index", folder, "--home", home, "--model", TINY_MODEL, "--workers", workers, "--json"],
        timeout=TIMEOUT,
        memory_cap_mb=memory_cap_mb,
        address_space_mb=max(8192, 2 * memory_cap_mb),  # a hard stop should sampling be late
    )
    status = run_cli(["status", "--home", home, "--json"], timeout=TIMEOUT)
    skipped = {}
    for entry in (status.json() or {}).get("skipped", []):
        number = token_number(entry.get("path", ""))
        if number is not None and str(entry.get("reason", "")).strip():
            skipped[number] = entry["reason"]
    state = read_state(home)
    return {
        "indexed": {token_number(path) for path in state.images_of(TINY_MODEL)},
        "indexed_real": sum(1 for path, _ in state.images if "/real/" in path),
        "skipped": skipped,
        "crashes": int(run.crashed) + int(status.crashed or status.returncode != 0),
        "index_run": {**run.brief(), "timed_out": run.timed_out,
                      "memory_capped": run.memory_capped,
                      "peak_rss_wait4_mb": run.max_rss_mb,
                      "peak_tree_rss_sampled_mb": run.tree_rss_mb},
        "status_run": status.brief(),
        "peak_rss_mb": max(run.max_rss_mb, run.tree_rss_mb),
        "seconds": round(run.seconds, 1),
    }


def _score(items: list, outcome: dict, real: int) -> dict:
    """Goal counts of one `index` run over `items` (and `real` Flickr photos)."""
    indexed, skipped = outcome["indexed"], outcome["skipped"]
    counts = {"crashes": outcome["crashes"], "good_missing": real - outcome["indexed_real"],
              "bad_unlisted": 0, "either_unaccounted": 0}
    examples = []
    for item in items:
        problem = None
        if item.expect == "good" and item.number not in indexed:
            problem = "good_missing"
        elif item.expect == "bad" and item.number not in skipped:
            problem = "bad_unlisted"  # not listed with a reason (indexed, or nowhere)
        elif item.expect == "either" and item.number not in indexed | set(skipped):
            problem = "either_unaccounted"
        if problem:
            counts[problem] += 1
            examples.append(f"{problem}: {item.family} {item.path[-60:]!r}")
    return {
        **counts,
        "good_indexed": sum(1 for i in items if i.expect == "good" and i.number in indexed)
        + outcome["indexed_real"],
        "bad_indexed": sum(1 for i in items if i.expect == "bad" and i.number in indexed),
        "skipped_listed": len(skipped),
        "examples": examples[:40],
    }


def _flickr_photos(folder: Path, count: int) -> list[Path]:
    source = SHARED_DATA / "flickr8k-1k" / "images"
    if count <= 0 or not source.is_dir():
        return []
    folder.mkdir(parents=True)
    chosen = sorted(source.glob("*.jpg"))[:count]
    for path in chosen:
        shutil.copy2(path, folder / path.name)
    return chosen
