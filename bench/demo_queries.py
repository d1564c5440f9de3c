"""Which sentences each model answers right on a scene collection: precision@3 per query.

The queries are templated from the scene world: a shape alone ("a hexagon", "three hexagons")
and each held-out colour-shape pair ("a purple hexagon", "two purple hexagons"). A picture
found is right when its scene holds an object of that shape (and colour); for a counted query,
when it is a group scene of that many. "one ..." is left out: a pair scene also shows one of
each of its objects, so the answer would be ambiguous. Every query with at least 3 right
pictures in the collection is asked; the mean over them is printed under each model.

    .venv/bin/python bench/demo_queries.py indexes/demo demo \\
        se-scenes-rn128/runs/free/hard4-128/last.pt [--record]

(`indexes/demo` is the collection `make run` writes: 1,000 held-out scenes, seed 0.)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402
from scene_probe import NUMBERS, _noun  # noqa: E402

from searchengine.demo.scenes import HELDOUT_PAIRS, SHAPES, read_scene_attributes  # noqa: E402

COUNTS = (2, 3)
TOP = 3


@dataclass(frozen=True)
class Query:
    text: str
    shape: str
    colour: str | None = None  # any colour
    count: int | None = None  # any scene that shows the object


def objects(scene: dict[str, str]) -> list[tuple[str, str]]:
    """(colour, shape) of each kind of object in a scenes.csv row."""
    shown = [(scene["colour"], scene["shape"])]
    if scene["kind"] == "pair":
        shown.append((scene["colour2"], scene["shape2"]))
    return shown


def is_right(query: Query, scene: dict[str, str]) -> bool:
    if query.count is not None and (scene["kind"] != "group" or int(scene["count"]) != query.count):
        return False
    return any(shape == query.shape and query.colour in (None, colour)
               for colour, shape in objects(scene))


def templated_queries() -> list[Query]:
    def phrase(colour: str | None, shape: str, count: int | None) -> str:
        words = [colour] if colour else []
        if count is None:
            article = "an" if (colour or shape)[0] in "aeiou" else "a"
            return " ".join([article, *words, shape])
        return " ".join([NUMBERS[str(count)], *words, _noun(shape, str(count))])

    counts = (None, *COUNTS)
    return ([Query(phrase(None, shape, count), shape, None, count)
             for shape, count in product(SHAPES, counts)]
            + [Query(phrase(colour, shape, count), shape, colour, count)
               for (colour, shape), count in product(sorted(HELDOUT_PAIRS), counts)])


def precision(model: str, folder: Path, queries: list[Query],
              scenes: dict[str, dict[str, str]]) -> dict[str, float]:
    """query text -> the share of its TOP pictures that are right, under `model`."""
    from searchengine.demo.run import encode_image_files
    from searchengine.encoder import Encoder

    names = sorted(scenes)
    encoder = Encoder.load(model)
    images = encode_image_files(encoder, [folder / "images" / n for n in names], 100)
    texts = encoder.encode_texts([q.text for q in queries])
    best = np.argsort(-(texts @ images.T), axis=1, kind="stable")[:, :TOP]
    return {q.text: sum(is_right(q, scenes[names[i]]) for i in row) / TOP
            for q, row in zip(queries, best, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a collection written by `searchengine scenes`")
    parser.add_argument("models", nargs="+", help="--model specs to compare")
    parser.add_argument("--record", action="store_true", help="write bench/results/NAME.json")
    parser.add_argument("--name", default="demo_queries", help="NAME of the recorded file")
    args = parser.parse_args()
    scenes = read_scene_attributes(args.folder)
    queries = [q for q in templated_queries()
               if sum(is_right(q, scene) for scene in scenes.values()) >= TOP]
    table = {model: precision(model, args.folder, queries, scenes) for model in args.models}
    width = max(len(q.text) for q in queries)
    print(f"precision@{TOP} on {args.folder} ({len(scenes)} scenes), one column per model:")
    for i, model in enumerate(args.models):
        print(f"  [{i}] {model}")
    for q in queries:
        print(f"{q.text:<{width}}  " + "  ".join(f"{table[m][q.text]:.2f}" for m in args.models))
    means = {m: float(np.mean(list(table[m].values()))) for m in args.models}
    print(f"{'mean':<{width}}  " + "  ".join(f"{means[m]:.2f}" for m in args.models))
    if args.record:
        write_result(args.name, {"folder": str(args.folder), "scenes": len(scenes), "top": TOP,
                                 "mean": means, "precision": table})


if __name__ == "__main__":
    main()
