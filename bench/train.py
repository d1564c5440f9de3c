"""Our trainer against open_clip's own (`open_clip_train.main`) on flickr8k-1k, same everything.

Both start from the same random se-tiny weights (saved to a file), train on the `train` split
(4,000 pairs, 800 images) with the same batch size, steps, warmup + cosine schedule, AdamW
settings, precision, seed and worker count; then both final checkpoints are scored with the same
recall code (standard protocol, `test` split: 200 images, 1,000 captions). Prints the figures
and writes bench/results/train.json. Our run's metrics.jsonl is also the recall curve.

    .venv/bin/python bench/train.py --epochs 8
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "flickr8k-1k"
RESULTS = ROOT / "bench" / "results"
THEIR_MAIN = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
    "from open_clip_train.main import main; main(sys.argv[1:])"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="se-tiny")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/searchengine-bench-train"))
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: this benchmark needs ../shared/data/flickr8k-1k")
    args.work.mkdir(parents=True, exist_ok=True)
    train_tsv, init = prepare(args)
    steps = args.epochs * (count_rows(train_tsv) // args.batch_size)
    ours = run_ours(args, init, steps)
    theirs = run_theirs(args, train_tsv, init)
    report(args, steps, ours, theirs)


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The train split as open_clip's TSV (absolute paths) and the shared starting weights."""
    import torch

    from searchengine.models import build_model, parse_model_spec
    from searchengine.training.pairs import read_pairs

    train = read_pairs(DATA, split="train")
    tsv = args.work / "train.tsv"
    with tsv.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows([str(pair.image), pair.caption] for pair in train.pairs)
    model, _, _ = build_model(parse_model_spec(f"{args.arch}/random"), seed=args.seed)
    init = args.work / "init.pt"
    torch.save({"state_dict": model.state_dict()}, init)
    return tsv, init


def count_rows(path: Path) -> int:
    return sum(1 for _ in path.open()) - 1


def run_ours(args: argparse.Namespace, init: Path, steps: int) -> dict:
    out = args.work / "ours"
    command = [
        str(Path(sys.executable).with_name("searchengine")), "train", str(DATA),
        "--split", "train", "--val-split", "test", "--model", f"{args.arch}/{init}",
        "--out", str(out), "--steps", str(steps), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--warmup", str(args.warmup), "--precision", args.precision,
        "--seed", str(args.seed), "--workers", str(args.workers), "--device", "cpu",
        "--eval-every", str(max(steps // 8, 1)), "--save-every", str(steps), "--json",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"][1:]  # the first step pays start-up
    seconds = sum(r["pairs_per_s"] and args.batch_size / r["pairs_per_s"] for r in train)
    curve = [(r["step"], r["text_to_image"]["R@5"], r["image_to_text"]["R@5"], r["recall_mean"])
             for r in records if r["kind"] == "eval"]
    return {"pairs_per_s": len(train) * args.batch_size / seconds, "wall_s": wall,
            "checkpoint": out / "last.pt", "curve": curve}


def run_theirs(args: argparse.Namespace, train_tsv: Path, init: Path) -> dict:
    from searchengine.models import CONFIG_DIR

    logs = args.work / "theirs"
    command = [
        sys.executable, "-c", THEIR_MAIN, str(CONFIG_DIR),
        "--train-data", str(train_tsv), "--dataset-type", "csv", "--csv-img-key", "filepath",
        "--csv-caption-key", "title", "--model", args.arch, "--pretrained", str(init),
        "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--warmup", str(args.warmup), "--wd", "0.2", "--precision", args.precision,
        "--seed", str(args.seed), "--workers", str(args.workers), "--logs", str(logs),
        "--name", "run", "--save-frequency", str(args.epochs), "--log-every-n-steps", "1",
        "--report-to", "", "--device", "cpu",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - started
    log = (logs / "run" / "out.log").read_text() if (logs / "run" / "out.log").is_file() else ""
    batch_times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", log + result.stderr)]
    batch_times = batch_times[1:]  # the first step pays start-up
    return {"pairs_per_s": len(batch_times) * args.batch_size / sum(batch_times), "wall_s": wall,
            "checkpoint": logs / "run" / "checkpoints" / f"epoch_{args.epochs}.pt",
            "steps_logged": len(batch_times) + 1}


def held_out_recall(arch: str, checkpoint: Path) -> dict:
    """Recall on the test split with our protocol code, for either trainer's checkpoint."""
    import torch

    from searchengine.models import build_model, parse_model_spec
    from searchengine.training.data import load_pixels
    from searchengine.training.evaluation import evaluate, prepare_validation
    from searchengine.training.pairs import read_pairs

    model, preprocess, tokenizer = build_model(parse_model_spec(f"{arch}/{checkpoint}"))
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    validation = prepare_validation(
        read_pairs(DATA, split="test"),
        lambda pairs: load_pixels(pairs, preprocess, size, workers=2), tokenizer, max_pairs=10**6,
    )
    with torch.no_grad():
        return evaluate(model, validation, 0, device="cpu").as_record()


def report(args: argparse.Namespace, steps: int, ours: dict, theirs: dict) -> None:
    import faiss
    import open_clip
    import torch

    ours_recall = held_out_recall(args.arch, ours["checkpoint"])
    theirs_recall = held_out_recall(args.arch, theirs["checkpoint"])
    start_recall = held_out_recall(args.arch, args.work / "init.pt")
    ratio = ours["pairs_per_s"] / theirs["pairs_per_s"]
    result = {
        "benchmark": "train: searchengine vs open_clip_train, flickr8k-1k",
        "settings": {k: str(v) for k, v in vars(args).items()}, "steps": steps,
        "ours": {"pairs_per_s": ours["pairs_per_s"], "wall_s": ours["wall_s"],
                 "test_recall": ours_recall, "curve_step_t2iR5_i2tR5_mean": ours["curve"]},
        "theirs": {"pairs_per_s": theirs["pairs_per_s"], "wall_s": theirs["wall_s"],
                   "test_recall": theirs_recall, "steps_logged": theirs["steps_logged"]},
        "start_test_recall": start_recall,
        "throughput_ratio_ours_over_theirs": ratio,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "open_clip": open_clip.__version__,
                    "faiss": faiss.__version__, "commit": _commit()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2))
    print(f"{steps} steps of batch {args.batch_size}, {args.arch}, {args.precision}")
    print(f"pairs/s   ours {ours['pairs_per_s']:.1f}  theirs {theirs['pairs_per_s']:.1f}  "
          f"ratio {ratio:.2f}")
    for name, record in (("start", start_recall), ("ours", ours_recall),
                         ("theirs", theirs_recall)):
        print(f"{name:7s} test t2i R@5 {record['text_to_image']['R@5']:.3f}  "
              f"i2t R@5 {record['image_to_text']['R@5']:.3f}  mean {record['recall_mean']:.4f}")
    print("recall curve (step, t2i R@5, i2t R@5, mean recall):")
    for point in ours["curve"]:
        print("  ", point)


def _commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True)
    return result.stdout.strip()


if __name__ == "__main__":
    main()
