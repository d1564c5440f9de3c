"""The recall curve of one training run on flickr8k-1k: random weights learning to match.

Trains a small architecture from `ARCH/random` on the `train` split (4,000 pairs, 800 images)
and validates on the `test` split (1,000 captions, 200 images) every `--eval-every` steps; writes
the curve (step, recall@1/5/10 text->image and image->text, diagonal gap, loss) to
bench/results/train_curve.json and the trainer's plot to bench/results/train_curve.png.

    .venv/bin/python bench/train_curve.py --arch se-tiny --steps 1500 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, SHARED_DATA, require_flickr, write_result  # noqa: E402

DATA = SHARED_DATA / "flickr8k-1k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="se-tiny")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/searchengine-bench-train-curve"))
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/train_curve.json and train_curve.png")
    args = parser.parse_args()
    require_flickr()
    from searchengine.training.loop import train
    from searchengine.training.settings import TrainSettings

    settings = TrainSettings(
        model=f"{args.arch}/random", steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, eval_every=args.eval_every,
        save_every=args.steps, workers=args.workers, seed=args.seed, device="cpu",
        progress=False,
    )
    shutil.rmtree(args.out, ignore_errors=True)  # a scratch folder: train never starts over a run
    load_before, started = os.getloadavg(), time.perf_counter()
    summary = train(args.out, settings, pairs=DATA, split="train", val_split="test")
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (args.out / "metrics.jsonl").read_text().splitlines()]
    curve = [_point(r) for r in records if r["kind"] == "eval"]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    print(f"{summary.steps} steps in {wall:.0f} s ({summary.pairs_per_second:.1f} pairs/s); "
          f"{summary.message}")
    if not args.record:
        return
    shutil.copyfile(args.out / "training.png", RESULTS / "train_curve.png")
    write_result("train_curve", {
        "benchmark": "train: recall curve, flickr8k-1k train -> test, random init",
        "settings": settings.as_dict(), "wall_s": wall,
        "pairs_per_s": summary.pairs_per_second,
        "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg(),
        "start": summary.start, "best": summary.best, "final": summary.final,
        "message": summary.message, "curve": curve,
        "loss_first_last_50_mean": [sum(losses[:50]) / len(losses[:50]),
                                    sum(losses[-50:]) / len(losses[-50:])],
    })
    print("step  t2i R@1  R@5   R@10 | i2t R@1  R@5   R@10 | gap")
    for point in curve:
        print(f"{point['step']:5d}  {point['t2i'][0]:.3f}  {point['t2i'][1]:.3f} "
              f"{point['t2i'][2]:.3f} |  {point['i2t'][0]:.3f}  {point['i2t'][1]:.3f} "
              f"{point['i2t'][2]:.3f} | {point['gap']:.3f}")


def _point(record: dict) -> dict:
    ks = ("R@1", "R@5", "R@10")
    return {"step": record["step"], "recall_mean": record["recall_mean"],
            "t2i": [record["text_to_image"][k] for k in ks],
            "i2t": [record["image_to_text"][k] for k in ks], "gap": record["diagonal_gap"]}


if __name__ == "__main__":
    main()
