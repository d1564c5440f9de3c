"""The hard-negative ablation: what models trained with and without `--hard-negatives` know.

For each model (a `--model` spec, e.g. `se-scenes/runs/hn/hard/last.pt`, or `demo`), the
zero-shot attribute probe of `scene_probe.py` (colour, shape, position, count) and exact recall@5
in both directions on a freshly generated held-out scene collection, side by side, with the
tie ceiling of that collection (`scene_ceiling.py`).

    .venv/bin/python bench/hard_negatives.py runs/hn/heldout demo \\
        se-scenes/runs/hn/base/last.pt se-scenes/runs/hn/hard/last.pt [--record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402
from scene_ceiling import ceiling  # noqa: E402
from scene_probe import probe  # noqa: E402

from searchengine.demo.run import evaluate_scenes  # noqa: E402

ATTRIBUTES = ("colour", "shape", "position", "count")
# the probe's diagnostics (see scene_probe.py), printed after the goals
DIAGNOSTICS = {"shape, small objects": "shape S", "shape, large objects": "shape L",
               "count given colour and shape": "count+"}


def measure(model: str, heldout: Path, limit: int) -> dict:
    accuracy = probe(model, heldout, limit)["accuracy"]
    recall = evaluate_scenes(model, heldout).overall.as_dict()
    return {"model": model, "probe": accuracy,
            "text_to_image_R@5": recall["text_to_image"]["R@5"],
            "image_to_text_R@5": recall["image_to_text"]["R@5"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heldout", type=Path, help="a held-out collection (`searchengine scenes`)")
    parser.add_argument("models", nargs="+", help="--model specs to compare")
    parser.add_argument("--limit", type=int, default=1000, help="group scenes for the probe")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/NAME.json")
    parser.add_argument("--name", default="hard_negatives",
                        help="NAME of the recorded file (default: hard_negatives)")
    args = parser.parse_args()
    bound = ceiling(args.heldout)
    rows = [measure(model, args.heldout, args.limit) for model in args.models]
    print(f"{args.heldout}: R@5 tie ceiling t2i {bound['text_to_image_ceiling']:.3f}, "
          f"i2t {bound['image_to_text_ceiling']:.3f}")
    print(f"{'model':<40} " + " ".join(f"{a:>8}" for a in ATTRIBUTES) + "  t2i R@5  i2t R@5 "
          + " ".join(f"{name:>7}" for name in DIAGNOSTICS.values()))
    for row in rows:
        diagnostics = [row["probe"][key] for key in DIAGNOSTICS]
        print(f"{row['model']:<40} " + " ".join(f"{row['probe'][a]:>8.3f}" for a in ATTRIBUTES)
              + f"  {row['text_to_image_R@5']:>7.3f}  {row['image_to_text_R@5']:>7.3f} "
              + " ".join("    n/a" if v is None else f"{v:>7.3f}" for v in diagnostics))
    if args.record:
        write_result(args.name, {"heldout": str(args.heldout), "ceiling": bound,
                                        "results": rows})


if __name__ == "__main__":
    main()
