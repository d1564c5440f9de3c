"""The best recall@5 any model could reach on a scene collection, given captions that are true of
several of its scenes.

A caption that leaves size or background unsaid ("two red triangles on the left") is equally
true of every scene with the same objects, count and position (or the same two objects in the
same relation). Recall counts only the caption's own image, so even a perfect model loses those
ties half the time. This program counts, for each caption, the scenes it is true of, and for each
image, the captions true of it, and reports the expected recall@5 of a model that ranks every
true item above every false one and breaks ties at random. It reads the attribute table
(scenes.csv) and the captions; no model is involved.

    .venv/bin/python bench/scene_ceiling.py runs/demo-model/heldout
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from math import comb
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from searchengine.demo.run import read_scene_captions  # noqa: E402
from searchengine.demo.scenes import _BACKGROUND_WORDS, _INVERSE, read_scene_attributes  # noqa: E402

SIZE_WORDS = r"\b(?:small|little|large|big) "


def scene_key(scene: dict) -> tuple:
    """What every caption of a scene states: its objects, count and position or relation."""
    if scene["kind"] == "group":
        return ("group", scene["colour"], scene["shape"], scene["count"], scene["position"])
    one = (scene["colour"], scene["shape"], scene["relation"])
    other = (scene["colour2"], scene["shape2"], _INVERSE[scene["relation"]])
    return ("pair", frozenset([one, other]))


def scenes_true_of(caption: str, owner: dict, candidates: dict[int, dict]) -> list[int]:
    """The candidates ({scene index: attributes}, same scene_key as the owner) that `caption`,
    written for `owner`, also describes: those agreeing on the size and background it states."""
    says_background = any(p in caption for p in _BACKGROUND_WORDS[owner["background"]])
    if owner["kind"] == "group":
        sizes = [(owner["size"], re.search(SIZE_WORDS + owner["colour"], caption))]
    else:
        sizes = [(owner["size"], re.search(SIZE_WORDS + f"{owner['colour']} {owner['shape']}",
                                            caption)),
                 (owner["size2"], re.search(SIZE_WORDS + f"{owner['colour2']} {owner['shape2']}",
                                            caption))]
    true = []
    for index, other in candidates.items():
        if says_background and other["background"] != owner["background"]:
            continue
        if owner["kind"] == "group":
            other_sizes = [other["size"]]
        elif (other["colour"], other["shape"]) == (owner["colour"], owner["shape"]):
            other_sizes = [other["size"], other["size2"]]
        else:
            other_sizes = [other["size2"], other["size"]]
        if any(stated and size != theirs
               for (size, stated), theirs in zip(sizes, other_sizes, strict=True)):
            continue
        true.append(index)
    return true


def ceiling(folder: Path, k: int = 5) -> dict:
    attributes = read_scene_attributes(folder)
    names = list(attributes)
    scenes = [attributes[name] for name in names]
    captions, owners = read_scene_captions(folder / "captions.csv", names)
    by_key = defaultdict(list)  # scene_key -> indices of the scenes
    for i, scene in enumerate(scenes):
        by_key[scene_key(scene)].append(i)
    text_hits = []
    true_captions = Counter()  # scene index -> captions of the collection true of it
    for caption, owner in zip(captions, owners, strict=True):
        candidates = {i: scenes[i] for i in by_key[scene_key(scenes[owner])]}
        true = scenes_true_of(caption, scenes[owner], candidates)
        text_hits.append(min(1.0, k / len(true)))
        true_captions.update(true)
    own = Counter(owners.tolist())
    image_hits = []
    for i in range(len(scenes)):  # P(at least one own caption among the first k of the true ones)
        n, m = true_captions[i], own[i]
        image_hits.append(1 - comb(n - m, k) / comb(n, k) if n >= k else 1.0)
    by_kind = {}
    for kind in ("group", "pair"):
        hits = [hit for hit, scene in zip(image_hits, scenes, strict=True) if scene["kind"] == kind]
        by_kind[kind] = sum(hits) / max(1, len(hits))
    return {"folder": str(folder), "images": len(scenes), "captions": len(captions), "k": k,
            "text_to_image_ceiling": round(sum(text_hits) / len(text_hits), 4),
            "image_to_text_ceiling": round(sum(image_hits) / len(image_hits), 4),
            "image_to_text_ceiling_by_kind": {kind: round(v, 4) for kind, v in by_kind.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="scene collections written by `searchengine scenes`")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/scene_ceiling.json")
    args = parser.parse_args()
    results = []
    for folder in args.folders:
        row = ceiling(folder, args.k)
        results.append(row)
        print(f"{folder}: text->image R@{args.k} ceiling {row['text_to_image_ceiling']:.3f}, "
              f"image->text {row['image_to_text_ceiling']:.3f} "
              f"(group {row['image_to_text_ceiling_by_kind']['group']:.3f}, "
              f"pair {row['image_to_text_ceiling_by_kind']['pair']:.3f})")
    if args.record:
        write_result("scene_ceiling", {"results": results})


if __name__ == "__main__":
    main()
