"""`searchengine train --augment` against the evaluation crop: held-out recall over several seeds.

Trains `ARCH/random` on flickr8k-1k's `train` split (4,000 pairs, 800 images) with and without
`--augment`, for each seed (the seed also draws the starting weights, so a seed's two runs start
from the same model and see the same batches), alternating the two so that load on the machine
falls on both alike. Validation is the `test` split (200 images, 1,000 captions) every
`--eval-every` steps. Reports each run's final and best mean recall (the mean of R@1/5/10 both
ways) and t2i/i2t R@5, then the mean and spread (sample standard deviation, min-max) per arm.
"best" picks its step on the same split it reports, so it flatters both arms alike; "final"
does not. `--record` writes bench/results/train_augment.json.

    .venv/bin/python bench/train_augment.py --seeds 0 1 2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA, require_flickr, write_result  # noqa: E402

DATA = SHARED_DATA / "flickr8k-1k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="se-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/train_augment.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/searchengine-bench-augment"))
    args = parser.parse_args()
    require_flickr()
    runs = []
    for seed in args.seeds:
        for augment in (False, True) if seed % 2 == 0 else (True, False):
            runs.append(run(args, seed, augment))
            last = runs[-1]
            print(f"seed {seed} augment {augment!s:5}: final {last['final_mean']:.4f} best "
                  f"{last['best_mean']:.4f} (step {last['best_step']}) in {last['wall_s']:.0f} s,"
                  f" load {last['loadavg_before'][0]:.1f}->{last['loadavg_after'][0]:.1f}",
                  flush=True)
    summary = {arm: _summarise([r for r in runs if r["augment"] == (arm == "augment")])
               for arm in ("plain", "augment")}
    for arm, figures in summary.items():
        print(f"{arm:8s} " + "  ".join(
            f"{name} {f['mean']:.4f} +- {f['stdev']:.4f} [{f['min']:.4f}, {f['max']:.4f}]"
            for name, f in figures.items()))
    if args.record:
        write_result("train_augment", {
            "benchmark": "train --augment vs the evaluation crop, held-out recall, flickr8k-1k",
            "settings": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
            "runs": runs})


def run(args: argparse.Namespace, seed: int, augment: bool) -> dict:
    out = args.work / f"seed{seed}-{'augment' if augment else 'plain'}"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        str(Path(sys.executable).with_name("searchengine")), "train", str(DATA),
        "--split", "train", "--val-split", "test", "--model", f"{args.arch}/random",
        "--out", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--warmup", str(args.warmup),
        "--weight-decay", str(args.weight_decay), "--seed", str(seed),
        "--workers", str(args.workers), "--device", "cpu", "--eval-every", str(args.eval_every),
        "--save-every", str(args.steps), "--json", *(["--augment"] if augment else []),
    ]
    load_before, started = os.getloadavg(), time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    summary = json.loads(result.stdout)
    return {
        "seed": seed, "augment": augment, "wall_s": time.perf_counter() - started,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "final_mean": summary["final"]["recall_mean"], "best_mean": summary["best"]["recall_mean"],
        "best_step": summary["best"]["step"], "start_mean": summary["start"]["recall_mean"],
        "final_t2i_R@5": summary["final"]["text_to_image"]["R@5"],
        "final_i2t_R@5": summary["final"]["image_to_text"]["R@5"],
        "pairs_per_s": summary["pairs_per_second"],
    }


def _summarise(runs: list[dict]) -> dict:
    figures = {}
    for name in ("final_mean", "best_mean", "final_t2i_R@5", "final_i2t_R@5"):
        values = [r[name] for r in runs]
        figures[name] = {"mean": statistics.fmean(values),
                         "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "min": min(values), "max": max(values)}
    return figures


if __name__ == "__main__":
    main()
