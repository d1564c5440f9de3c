"""Our trainer against open_clip's own (`open_clip_train.main`) on flickr8k-1k, same everything.

Both start from the same random se-tiny weights (saved to a file), train on the `train` split
(4,000 pairs, 800 images) with the same batch size, steps, warmup + cosine schedule, AdamW
settings, precision, seed and worker count. The two run back to back and alternate for
`--rounds` rounds (ours, theirs, ours, theirs, ...) so that other load on the machine falls on
both alike; the load average is recorded around every segment.

pairs/s has one definition for both: pairs of the timed steps / the summed wall time of those
steps, where a step's time runs from the end of the previous step to the end of its optimiser
step (so it includes waiting for the data, as open_clip_train's `Batch (t)` does). The first step
of each run (worker start-up) is left out, and so are start-up, validation and checkpoint
writing: ours evaluates only before the first and after the last step (open_clip_train, given
no validation data, evaluates never), and open_clip_train's times are read from its
per-step log. `--control` adds a third segment per round: open_clip_train with one intra-op
thread (OMP_NUM_THREADS=1), the thread policy our trainer uses on this machine, to show how much
of the difference is that policy.

`--steps N` trains both on the first N x batch-size rows of the split (one epoch each, so the
same pairs and the same schedule; ours validates on the `test` split), for short runs.
`--before SRC` adds a segment per round that runs our trainer from another source tree (an
export of an earlier commit: `git archive COMMIT | tar -x -C SRC`), to time a change to our
trainer against the code before it in the same run, interleaved. `--ours-threads N` adds a
segment per round of our trainer under OMP_NUM_THREADS=N (which it obeys instead of its own
thread policy): with N=1 and one worker on two cores, the policy before issue 17 (the model on
the one core a decode worker left), so that the policy's own effect is measured in the same run.

Every final checkpoint is scored with the same recall code (standard protocol, `test` split: 200
images, 1,000 captions). Prints the figures; `--record` writes bench/results/train.json.

    .venv/bin/python bench/train.py --epochs 1 --rounds 2 --control
    .venv/bin/python bench/train.py --arch ViT-S-32 --steps 16 --batch-size 32 --workers 1 \
        --before /tmp/searchengine-before
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SHARED_DATA,
    cli_from,
    imported_from,
    require_flickr,
    write_result,
)

DATA = SHARED_DATA / "flickr8k-1k"
THEIR_MAIN = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
    "from open_clip_train.main import main; main(sys.argv[1:])"
)
BATCH_TIME = re.compile(r"Batch \(t\): ([0-9.]+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="se-tiny")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None,
                        help="train on the first steps x batch-size rows, one epoch")
    parser.add_argument("--before", type=Path, default=None, metavar="SRC",
                        help="also run our trainer from this source tree each round")
    parser.add_argument("--rounds", type=int, default=2, help="ours+theirs pairs, alternating")
    parser.add_argument("--ours-threads", type=int, default=None, metavar="N",
                        help="add our trainer under OMP_NUM_THREADS=N each round")
    parser.add_argument("--control", action="store_true",
                        help="also run open_clip_train with OMP_NUM_THREADS=1 each round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/train.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/searchengine-bench-train"))
    args = parser.parse_args()
    require_flickr()
    args.work.mkdir(parents=True, exist_ok=True)
    train_tsv, init = prepare(args)
    steps = args.epochs * (count_rows(train_tsv) // args.batch_size)
    segments = []
    for round_ in range(args.rounds):
        if args.before:
            segments.append(_timed("ours_before", round_, lambda r=round_: run_ours(
                args, init, steps, r, train_tsv, source=args.before)))
        segments.append(_timed("ours", round_,
                               lambda r=round_: run_ours(args, init, steps, r, train_tsv)))
        if args.ours_threads:
            segments.append(_timed(f"ours_{args.ours_threads}_thread", round_, lambda r=round_:
                                   run_ours(args, init, steps, r, train_tsv,
                                            threads=args.ours_threads)))
        segments.append(_timed("theirs", round_,
                               lambda r=round_: run_theirs(args, train_tsv, init, r)))
        if args.control:
            segments.append(_timed("theirs_1_thread", round_, lambda r=round_: run_theirs(
                args, train_tsv, init, r, threads=1)))
        print(" | ".join(f"{s['trainer']} r{s['round']} {s['pairs_per_s']:.1f} pairs/s"
                         for s in segments if s["round"] == round_), flush=True)
    report(args, steps, segments)


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The train split as open_clip's TSV (absolute paths) and the shared starting weights."""
    import torch

    from searchengine.models import build_model, parse_model_spec
    from searchengine.training.pairs import read_pairs

    train = read_pairs(DATA, split="train")
    rows = train.pairs if args.steps is None else train.pairs[:args.steps * args.batch_size]
    if args.steps is not None:
        args.epochs = 1
    tsv = args.work / "train.tsv"
    with tsv.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["filepath", "title"])
        writer.writerows([str(pair.image), pair.caption] for pair in rows)
    model, _, _ = build_model(parse_model_spec(f"{args.arch}/random"), seed=args.seed)
    init = args.work / "init.pt"
    torch.save({"state_dict": model.state_dict()}, init)
    return tsv, init


def count_rows(path: Path) -> int:
    return sum(1 for _ in path.open()) - 1


def _timed(trainer: str, round_: int, run) -> dict:
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = run()
    return {"trainer": trainer, "round": round_, **result,
            "wall_s": time.perf_counter() - started,
            "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg()}


def _environment(threads: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return {**env, "PYTHONWARNINGS": "ignore"}


def run_ours(args: argparse.Namespace, init: Path, steps: int, round_: int, train_tsv: Path,
             source: Path | None = None, threads: int | None = None) -> dict:
    label = ("-before" if source else "") + (f"-{threads}t" if threads else "")
    out = args.work / f"ours{label}-{round_}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resumed or skipped one
    cli, env = cli_from(source)  # the trainer of SRC, else of this checkout (checked below)
    env = {**_environment(threads), "PYTHONPATH": env["PYTHONPATH"]}
    data = (["--val", str(DATA), "--val-split", "test", str(train_tsv)] if args.steps else
            ["--split", "train", "--val-split", "test", str(DATA)])
    command = [
        *cli,
        "train", *data, "--model", f"{args.arch}/{init}",
        "--out", str(out), "--steps", str(steps), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--warmup", str(args.warmup), "--precision", args.precision,
        "--seed", str(args.seed), "--workers", str(args.workers), "--device", "cpu",
        "--eval-every", str(steps), "--save-every", str(steps), "--json",
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    imported_from(result.stderr, source)
    summary = json.loads(result.stdout)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["kind"] == "train"][1:]  # the first step pays start-up
    seconds = [args.batch_size / r["pairs_per_s"] for r in timed]
    return {"pairs_per_s": len(seconds) * args.batch_size / sum(seconds),
            "pairs_per_s_trainer_summary": summary["pairs_per_second"],
            "steps_timed": len(seconds), "checkpoint": str(out / "last.pt")}


def run_theirs(args: argparse.Namespace, train_tsv: Path, init: Path, round_: int,
               threads: int | None = None) -> dict:
    from searchengine.models import CONFIG_DIR

    logs = args.work / f"theirs-{round_}{'-threads' if threads else ''}"
    shutil.rmtree(logs, ignore_errors=True)  # open_clip_train skips a run whose folder exists
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
    subprocess.run(command, check=True, capture_output=True, text=True,
                   env=_environment(threads))
    # out.log only (stderr repeats the same lines); with --log-every-n-steps 1 and the meters
    # reset after each log line, `Batch (t)` is the time of that one step
    batch_times = [float(t) for t in BATCH_TIME.findall((logs / "run" / "out.log").read_text())]
    timed = batch_times[1:]  # the first step pays start-up
    return {"pairs_per_s": len(timed) * args.batch_size / sum(timed), "steps_timed": len(timed),
            "checkpoint": str(logs / "run" / "checkpoints" / f"epoch_{args.epochs}.pt")}


def held_out_recall(arch: str, checkpoints: list[Path]) -> list[dict]:
    """Recall on the test split with our protocol code, for either trainer's checkpoints."""
    import torch

    from searchengine.models import build_model, parse_model_spec
    from searchengine.training.data import load_pixels
    from searchengine.training.evaluation import evaluate, prepare_validation
    from searchengine.training.pairs import read_pairs

    records, validation = [], None
    for checkpoint in checkpoints:
        model, preprocess, tokenizer = build_model(parse_model_spec(f"{arch}/{checkpoint}"))
        if validation is None:
            size = model.visual.image_size
            size = int(size[0] if isinstance(size, (tuple, list)) else size)
            validation = prepare_validation(
                read_pairs(DATA, split="test"),
                lambda pairs, p=preprocess, s=size: load_pixels(pairs, p, s, workers=2),
                tokenizer, max_pairs=10**6,
            )
        with torch.no_grad():
            records.append(evaluate(model, validation, 0, device="cpu").as_record())
    return records


def _summarise(segments: list[dict], trainer: str, batch_size: int) -> dict:
    mine = [s for s in segments if s["trainer"] == trainer]
    pairs = sum(s["steps_timed"] for s in mine) * batch_size
    seconds = sum(s["steps_timed"] * batch_size / s["pairs_per_s"] for s in mine)
    r5 = [s["test_recall"]["text_to_image"]["R@5"] for s in mine]
    return {"pairs_per_s": pairs / seconds, "pairs_per_s_each": [s["pairs_per_s"] for s in mine],
            "test_t2i_R@5_each": r5, "test_t2i_R@5_mean": sum(r5) / len(r5),
            "test_i2t_R@5_each": [s["test_recall"]["image_to_text"]["R@5"] for s in mine]}


def report(args: argparse.Namespace, steps: int, segments: list[dict]) -> None:
    start, *recalls = held_out_recall(
        args.arch, [args.work / "init.pt"] + [Path(s["checkpoint"]) for s in segments])
    for segment, recall in zip(segments, recalls, strict=True):
        segment["test_recall"] = recall
    trainers = dict.fromkeys(s["trainer"] for s in segments)
    summary = {name: _summarise(segments, name, args.batch_size) for name in trainers}
    ratio = summary["ours"]["pairs_per_s"] / summary["theirs"]["pairs_per_s"]
    before = summary.get("ours_before")
    ratio_before = summary["ours"]["pairs_per_s"] / before["pairs_per_s"] if before else None
    rounds = [next(s["pairs_per_s"] for s in segments if s["trainer"] == n and s["round"] == r)
              for r in range(args.rounds) for n in ("ours", "theirs")]
    result = {
        "benchmark": "train: searchengine vs open_clip_train, flickr8k-1k",
        "settings": {k: str(v) for k, v in vars(args).items()}, "steps": steps,
        "pairs_per_s_definition": "timed-step pairs / summed wall time of those steps (data wait "
                                  "included; first step, start-up, eval, checkpoints excluded)",
        "throughput_ratio_ours_over_theirs": ratio,
        "throughput_ratio_ours_over_ours_before": ratio_before,
        "throughput_ratio_each_round": [rounds[i] / rounds[i + 1]
                                        for i in range(0, len(rounds), 2)],
        "summary": summary, "start_test_recall": start, "segments": segments,
        "loadavg_at_end": os.getloadavg(),
    }
    if args.record:
        write_result("train", result)
    print(f"{steps} steps of batch {args.batch_size}, {args.arch}, {args.precision}, "
          f"{args.rounds} rounds")
    for name, figures in summary.items():
        each = ", ".join(f"{v:.1f}" for v in figures["pairs_per_s_each"])
        print(f"{name:16s} {figures['pairs_per_s']:6.1f} pairs/s ({each})  "
              f"test t2i R@5 {figures['test_t2i_R@5_mean']:.3f}")
    if ratio_before is not None:
        print(f"ratio ours / ours before {ratio_before:.2f}")
    for name in [n for n in summary if n.startswith("ours_") and n.endswith("_thread")]:
        gain = summary["ours"]["pairs_per_s"] / summary[name]["pairs_per_s"]
        print(f"ratio ours / {name} {gain:.2f}")
    print(f"ratio ours / theirs {ratio:.2f}; start test t2i R@5 "
          f"{start['text_to_image']['R@5']:.3f}; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
