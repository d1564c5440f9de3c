"""What a model knows of each scene attribute on its own: zero-shot accuracy per attribute.

Recall on whole captions can be high while the model ignores an attribute that the others make
redundant. This program asks one attribute at a time of the single-kind (group) scenes of a
collection, with plain prompts and the other attributes left out ("a red shape", "two shapes",
"a shape on the left"), and, for shape, also with the true colour given ("a red circle" against
"a red square", ...). Chance is 1 / number of values. Two diagnostics say what limits shape and
count: shape accuracy on small and on large objects apart (a gap points at the input
resolution), and count with the object named as the training captions name it ("two red
circles" against "one red circle" and "three red circles"; "shapes" never occurs in them).
`--confusion` prints which shape each true shape is taken for, zero-shot and (with
`--linear-from`) by the linear probe: shapes confused by both are hard to see in the pixels,
shapes confused only zero-shot are words the model has not tied to what it sees.

    .venv/bin/python bench/scene_probe.py runs/demo-model/heldout --model demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from searchengine.demo.scenes import COLOURS, SHAPES, read_scene_attributes  # noqa: E402

COUNT_WORDS = {"1": "one shape", "2": "two shapes", "3": "three shapes"}
NUMBERS = {"1": "one", "2": "two", "3": "three"}
POSITIONS = {"left": "on the left", "right": "on the right", "top": "at the top",
             "bottom": "at the bottom", "centre": "in the centre"}


def _noun(shape: str, count: str) -> str:
    """The shape's word in the scene captions' number ("circle", "circles", "crosses")."""
    return shape if count == "1" else shape + ("es" if shape.endswith("s") else "s")


def confusion(truth: list[str], chosen: list[str], values: tuple[str, ...]) -> dict:
    """{true value: {chosen value: how many}} over `values` in their order, zeros included."""
    table = {v: dict.fromkeys(values, 0) for v in values}
    for true, picked in zip(truth, chosen, strict=True):
        table[true][picked] += 1
    return table


def format_confusion(table: dict, indent: str = "  ") -> list[str]:
    """Rows "true: counts... accuracy" under a header of the chosen values (first 5 letters)."""
    values = list(table)
    lines = [indent + " " * 10 + " ".join(f"{v[:5]:>5}" for v in values) + "   acc"]
    for true, row in table.items():
        total = sum(row.values())
        shown = f"{row[true] / total:.2f}" if total else "  n/a"
        lines.append(indent + f"{true:>9} " + " ".join(f"{row[v]:5d}" for v in values)
                     + f"  {shown}")
    return lines


def _group_scenes(encoder, folder: Path, limit: int, *,
                  named_colours_only: bool = False) -> tuple[np.ndarray, list[dict]]:
    """The first `limit` group scenes of `folder`: their image vectors (n, d) and attributes
    (with `named_colours_only`, none drawn in an unnamed colour: `scenes --free-colour`)."""
    from searchengine.demo.run import encode_image_files

    attributes = read_scene_attributes(folder)
    names = [name for name, row in attributes.items() if row["kind"] == "group"
             and (row["colour"] in COLOURS or not named_colours_only)][:limit]
    images = encode_image_files(encoder, [folder / "images" / n for n in names], 128)
    return images, [attributes[name] for name in names]


def probe(model: str, folder: Path, limit: int) -> dict:
    from searchengine.encoder import Encoder

    encoder = Encoder.load(model)
    images, rows = _group_scenes(encoder, folder, limit)

    def choices(prompts: dict[str, str]) -> list[str]:
        """The value of each image's best prompt."""
        values = list(prompts)
        texts = encoder.encode_texts([prompts[v] for v in values])  # (n_values, d)
        return [values[c] for c in (images @ texts.T).argmax(axis=1)]

    def hits(prompts: dict[str, str], attribute: str) -> np.ndarray:
        """(n,) bool: whether each image's best prompt names its true value."""
        return np.array([c == r[attribute] for c, r in zip(choices(prompts), rows, strict=True)])

    def given(prompt: Callable[[dict[str, str], str], str], values: tuple, attribute: str):
        """(n,) bool, with each image's own other attributes in the prompts."""
        found, encoded = [], {}
        for image, row in zip(images, rows, strict=True):
            prompts = tuple(prompt(row, value) for value in values)
            if prompts not in encoded:
                encoded[prompts] = encoder.encode_texts(list(prompts))  # (n_values, d)
            found.append(values[int((encoded[prompts] @ image).argmax())] == row[attribute])
        return np.array(found)

    shape_choices = choices({s: f"a {s}" for s in SHAPES})
    shape = np.array([c == r["shape"] for c, r in zip(shape_choices, rows, strict=True)])
    small = np.array([row["size"] == "small" for row in rows])
    results = {
        "colour": (hits({c: f"a {c} shape" for c in COLOURS}, "colour").mean(), 1 / len(COLOURS)),
        "count": (hits(COUNT_WORDS, "count").mean(), 1 / len(COUNT_WORDS)),
        "position": (hits(POSITIONS, "position").mean(), 1 / len(POSITIONS)),
        "shape": (shape.mean(), 1 / len(SHAPES)),
        "shape given colour": (
            given(lambda row, s: f"a {row['colour']} {s}", SHAPES, "shape").mean(),
            1 / len(SHAPES)),
        "shape, small objects": (shape[small].mean() if small.any() else None, 1 / len(SHAPES)),
        "shape, large objects": (shape[~small].mean() if (~small).any() else None,
                                 1 / len(SHAPES)),
        "count given colour and shape": (
            given(lambda row, n: f"{NUMBERS[n]} {row['colour']} {_noun(row['shape'], n)}",
                  tuple(COUNT_WORDS), "count").mean(), 1 / len(COUNT_WORDS)),
    }
    return {"model": model, "folder": str(folder), "scenes": len(rows),
            "accuracy": {name: None if acc is None else round(float(acc), 4)
                         for name, (acc, _) in results.items()},
            "chance": {name: round(chance, 4) for name, (_, chance) in results.items()},
            "shape confusion": confusion([r["shape"] for r in rows], shape_choices, SHAPES)}


def ridge_classify(fit_x: np.ndarray, labels: list[str], x: np.ndarray,
                   strength: float = 1e-4) -> list[str]:
    """The label of each row of `x` by a ridge regression on one-hot targets, fitted in closed
    form (float64, with a bias) on `fit_x` (n, d) and `labels`; ridge `strength` times n."""
    values = sorted(set(labels))
    targets = np.array([[label == v for v in values] for label in labels], dtype=np.float64)

    def design(rows: np.ndarray) -> np.ndarray:
        return np.hstack([rows.astype(np.float64), np.ones((len(rows), 1))])

    a = design(fit_x)
    weights = np.linalg.solve(a.T @ a + strength * len(a) * np.eye(a.shape[1]), a.T @ targets)
    return [values[c] for c in (design(x) @ weights).argmax(axis=1)]


def linear_probe(model: str, train: Path, folder: Path, limit: int, fit_limit: int) -> dict:
    """What the image vectors hold, whatever the text tower makes of it: per attribute, a ridge
    regression classifier (one-hot targets, closed form) fitted on `train`'s group scenes and
    scored on `folder`'s (for all but colour, with each colour's mean vector taken out). High
    here and low in `probe` means the image tower sees the attribute and the words are not tied
    to it; low here means the image tower itself misses it."""
    from searchengine.encoder import Encoder

    encoder = Encoder.load(model)
    fit_x, fit_rows = _group_scenes(encoder, train, fit_limit, named_colours_only=True)
    test_x, test_rows = _group_scenes(encoder, folder, limit)

    # Held-out scenes pair each colour with the one shape it never has in training, so a probe
    # that may read colour learns "blue is never a circle" and scores below chance there: the
    # other attributes are read from the vectors less their colour's mean (the fit set's).
    means = {colour: fit_x[[row["colour"] == colour for row in fit_rows]].mean(axis=0)
             for colour in {row["colour"] for row in fit_rows}}

    def centred(x: np.ndarray, rows: list[dict]) -> np.ndarray:
        return x - np.stack([means[row["colour"]] for row in rows])

    accuracy, shape_table = {}, {}
    for attribute in ("colour", "shape", "position", "count"):
        fit, test = ((fit_x, test_x) if attribute == "colour" else
                     (centred(fit_x, fit_rows), centred(test_x, test_rows)))
        chosen = ridge_classify(fit, [row[attribute] for row in fit_rows], test)
        accuracy[attribute] = round(float(np.mean(
            [c == row[attribute] for c, row in zip(chosen, test_rows, strict=True)])), 4)
        if attribute == "shape":
            shape_table = confusion([row["shape"] for row in test_rows], chosen, SHAPES)
    return {"model": model, "fitted on": str(train), "folder": str(folder),
            "scenes": len(test_rows), "accuracy": accuracy, "shape confusion": shape_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="scene collections written by `searchengine scenes`")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--limit", type=int, default=1000, help="group scenes per collection")
    parser.add_argument("--linear-from", type=Path, metavar="FOLDER",
                        help="also fit a linear probe of the image vectors on FOLDER's scenes "
                             "(e.g. a train-split collection) and score it on each collection")
    parser.add_argument("--linear-limit", type=int, default=5000,
                        help="group scenes the linear probe is fitted on")
    parser.add_argument("--confusion", action="store_true",
                        help="also print the shape confusion tables (always in the record)")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/scene_probe.json")
    args = parser.parse_args()
    results = []
    for folder in args.folders:
        row = probe(args.model, folder, args.limit)
        results.append(row)
        print(f"{folder} ({row['scenes']} group scenes, {args.model}):")
        for name, value in row["accuracy"].items():
            shown = "n/a" if value is None else f"{value:.3f}"
            print(f"  {name:<30} {shown:>5}  (chance {row['chance'][name]:.3f})")
        if args.confusion:
            print("  shape taken for (rows: true shape; prompts \"a circle\", ...):")
            print("\n".join(format_confusion(row["shape confusion"], "    ")))
        if args.linear_from is not None:
            row["linear"] = linear_probe(args.model, args.linear_from, folder, args.limit,
                                         args.linear_limit)
            print(f"  linear probe of the image vectors (colour-centred), fitted on "
                  f"{args.linear_from}:")
            for name, value in row["linear"]["accuracy"].items():
                print(f"    {name:<28} {value:.3f}")
            if args.confusion:
                print("    shape taken for by the linear probe:")
                print("\n".join(format_confusion(row["linear"]["shape confusion"], "      ")))
    if args.record:
        write_result("scene_probe", {"results": results})


if __name__ == "__main__":
    main()
