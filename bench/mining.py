"""What one refresh of `train --hard-negatives mined` costs, and what the IVF index past
`EXACT_LIMIT` pairs gives up against the exact (flat) neighbours.

Embeds the captions of a collection with a model's text tower as the trainer does (tokenised
once, then `embed_captions`), then finds every caption's neighbours with a flat index and with
the IVF index `MinedBatches` uses above its limit, timing each. Overlap: the share of the IVF's
neighbours that are among the flat index's (the k the sampler searches, and the first
`group - 1` a group takes).

    .venv/bin/python bench/mining.py runs/scenes-train --model demo [--record]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402


def overlap(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each row's first k of `found` that are among its first k of `exact`."""
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k
                          for f, e in zip(found, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a collection with captions.csv")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--limit", type=int, default=0, help="first N captions (0: all)")
    parser.add_argument("--group", type=int, default=8, help="--mine-group")
    parser.add_argument("--record", action="store_true", help="write bench/results/mining.json")
    args = parser.parse_args()

    from searchengine.index.vectors import VectorIndex
    from searchengine.models import build_model, parse_model_spec
    from searchengine.training.mining import CANDIDATES_PER_MEMBER, embed_captions

    with open(args.folder / "captions.csv", newline="", encoding="utf-8") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)]
    captions = captions[:args.limit] if args.limit else captions
    model, _, tokenizer = build_model(parse_model_spec(args.model), seed=0)
    load = os.getloadavg()
    started = time.perf_counter()
    tokens = tokenizer(captions)
    tokenise_s = time.perf_counter() - started
    started = time.perf_counter()
    vectors = np.ascontiguousarray(embed_captions(model, tokens, device="cpu"))
    embed_s = time.perf_counter() - started
    k = CANDIDATES_PER_MEMBER * args.group + 1
    timings, found = {}, {}
    for kind in ("ivf", "flat"):
        started = time.perf_counter()
        index = VectorIndex.build(kind, vectors.shape[1], np.arange(len(vectors)), vectors)
        _, found[kind] = index.search(vectors, k)
        timings[kind] = time.perf_counter() - started
    result = {
        "model": args.model, "captions": len(captions), "k": k, "group": args.group,
        "loadavg_before": load, "loadavg_after": os.getloadavg(),
        "tokenise_s": round(tokenise_s, 1), "embed_s": round(embed_s, 1),
        "flat_s": round(timings["flat"], 1), "ivf_s": round(timings["ivf"], 1),
        "overlap_k": round(overlap(found["ivf"], found["flat"], k), 4),
        "overlap_group": round(overlap(found["ivf"], found["flat"], args.group), 4),
    }
    print(f"{len(captions)} captions, {args.model}: tokenise {tokenise_s:.1f} s, embed "
          f"{embed_s:.1f} s; neighbours (k {k}): flat {timings['flat']:.1f} s, ivf "
          f"{timings['ivf']:.1f} s; ivf's among flat's: {result['overlap_k']:.3f} of {k}, "
          f"{result['overlap_group']:.3f} of the first {args.group} (load {load[0]:.1f})")
    if args.record:
        write_result("mining", result)


if __name__ == "__main__":
    main()
