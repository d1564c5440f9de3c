"""What a model knows of each scene attribute on its own: zero-shot accuracy per attribute.

Recall on whole captions can be high while the model ignores an attribute that the others make
redundant. This program asks one attribute at a time of the single-kind (group) scenes of a
collection, with plain prompts and the other attributes left out ("a red shape", "two shapes",
"a shape on the left"), and, for shape, also with the true colour given ("a red circle" against
"a red square", ...). Chance is 1 / number of values.

    .venv/bin/python bench/scene_probe.py runs/demo-model/heldout --model demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from searchengine.demo.scenes import COLOURS, SHAPES, read_scene_attributes  # noqa: E402

COUNT_WORDS = {"1": "one shape", "2": "two shapes", "3": "three shapes"}
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top",
             "bottom": "at the bottom", "centre": "in the centre"}


def probe(model: str, folder: Path, limit: int) -> dict:
    from searchengine.demo.run import encode_image_files
    from searchengine.encoder import Encoder

    attributes = read_scene_attributes(folder)
    names = [name for name, row in attributes.items() if row["kind"] == "group"][:limit]
    rows = [attributes[name] for name in names]
    encoder = Encoder.load(model)
    images = encode_image_files(encoder, [folder / "images" / n for n in names], 128)  # (n, d)

    def accuracy(prompts: dict[str, str], attribute: str) -> float:
        values = list(prompts)
        texts = encoder.encode_texts([prompts[v] for v in values])  # (n_values, d)
        chosen = (images @ texts.T).argmax(axis=1)
        truth = [r[attribute] for r in rows]
        return float(np.mean([values[c] == t for c, t in zip(chosen, truth, strict=True)]))

    shapes_in = {colour: encoder.encode_texts([f"a {colour} {shape}" for shape in SHAPES])
                 for colour in COLOURS}  # colour -> (n_shapes, d)
    shape_given_colour = [SHAPES[int((shapes_in[row["colour"]] @ image).argmax())] == row["shape"]
                          for image, row in zip(images, rows, strict=True)]
    results = {
        "colour": (accuracy({c: f"a {c} shape" for c in COLOURS}, "colour"), 1 / len(COLOURS)),
        "count": (accuracy(COUNT_WORDS, "count"), 1 / len(COUNT_WORDS)),
        "position": (accuracy(POSITIONS, "position"), 1 / len(POSITIONS)),
        "shape": (accuracy({s: f"a {s}" for s in SHAPES}, "shape"), 1 / len(SHAPES)),
        "shape given colour": (float(np.mean(shape_given_colour)), 1 / len(SHAPES)),
    }
    return {"model": model, "folder": str(folder), "scenes": len(rows),
            "accuracy": {name: round(acc, 4) for name, (acc, _) in results.items()},
            "chance": {name: round(chance, 4) for name, (_, chance) in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="scene collections written by `searchengine scenes`")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--limit", type=int, default=1000, help="group scenes per collection")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/scene_probe.json")
    args = parser.parse_args()
    results = []
    for folder in args.folders:
        row = probe(args.model, folder, args.limit)
        results.append(row)
        print(f"{folder} ({row['scenes']} group scenes, {args.model}):")
        for name, value in row["accuracy"].items():
            print(f"  {name:<20} {value:.3f}  (chance {row['chance'][name]:.3f})")
    if args.record:
        write_result("scene_probe", {"results": results})


if __name__ == "__main__":
    main()
