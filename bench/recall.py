"""Recall@k of `searchengine bench recall` on ../shared/data/flickr8k-1k (test split).

Runs the same library calls as the command, once per index kind on one scratch home (the images
and captions are embedded once; each kind rebuilds only its index), prints the table and writes
bench/results/recall.json and bench/results/recall.png.

    .venv/bin/python bench/recall.py [--model ViT-B-32/random] [--split test] [--kinds flat,ivf]

With random weights the figures sit at chance (R@k ~ k/200 for text->image over 200 images): the
point of this run is the pipeline, exact == flat index, and the loss of the approximate kinds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, SHARED_DATA, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED_DATA / "flickr8k-1k")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default="ViT-B-32/random")
    parser.add_argument("--kinds", default="flat,hnsw,ivf")
    parser.add_argument("-k", default="1,5,10")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/recall.json and recall.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not args.dataset.is_dir():
        sys.exit(f"{args.dataset} is absent; nothing to measure")

    from searchengine.eval import benchmark
    from searchengine.eval.datasets import read_caption_dataset
    from searchengine.settings import IngestSettings

    ks = tuple(int(k) for k in args.k.split(","))
    runs = []
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, None)
        data = read_caption_dataset(args.dataset, split=args.split)
        for kind in args.kinds.split(","):
            start = time.perf_counter()
            settings = benchmark.RecallSettings(ks=ks, index_kind=kind, ingest=IngestSettings())
            report = benchmark.measure_recall(engine, data, model=args.model, settings=settings)
            seconds = time.perf_counter() - start
            print(f"\n{report.model}, index kind {kind} ({seconds:.1f} s, embedding included "
                  f"on the first run only)")
            headers, rows = report.table()
            print("  ".join(headers))
            for row in rows:
                print("  ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
            runs.append(report.as_dict() | {"seconds": round(seconds, 2)})
            if kind == "flat" and args.record:
                benchmark.plot_recall(report, RESULTS / "recall.png")
    if args.record:
        write_result("recall", {"benchmark": "recall", "dataset": str(args.dataset),
                                "split": args.split, "runs": runs})


if __name__ == "__main__":
    main()
