"""bench/scene_probe.py's diagnostics: the count prompts use the scene captions' own nouns, and
the linear probe's classifier separates what is separable."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from conftest import TINY_MODEL  # noqa: E402
from scene_probe import NUMBERS, _noun, confusion, format_confusion, probe, ridge_classify  # noqa: E402

from searchengine.demo.scenes import SHAPES, generate_scenes, write_collection  # noqa: E402


def test_count_prompts_name_the_object_as_the_captions_do() -> None:
    """"two red crosses", not "two red crosss": a probe in words the model never read measures
    the words, not the counting."""
    checked = 0
    for scene in generate_scenes(200, seed=4):
        if scene.kind != "group":
            continue
        obj, count = scene.objects[0], str(scene.count)
        phrase = f"{obj.colour} {_noun(obj.shape, count)}"
        for caption in scene.captions:
            words = caption.replace(",", "").split()
            if NUMBERS[count] in words:
                assert f" {phrase}" in f" {caption}", (phrase, caption)
                checked += 1
    assert checked > 20


def test_ridge_classifier_recovers_linearly_separable_labels() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    labels = rng.integers(4, size=400)
    points = centres[labels] + rng.normal(size=(400, 16)) * 0.3
    names = [f"class {i}" for i in labels]
    predicted = ridge_classify(points[:300], names[:300], points[300:])
    assert predicted == names[300:]
    shuffled = list(rng.permutation(names[:300]))  # labels unrelated to the points: near chance
    guessed = ridge_classify(points[:300], shuffled, points[300:])
    assert np.mean([a == b for a, b in zip(guessed, names[300:], strict=True)]) < 0.6


def test_confusion_table_counts_each_scene_once() -> None:
    table = confusion(["circle", "circle", "star"], ["circle", "hexagon", "circle"], SHAPES)
    assert list(table) == list(SHAPES)
    assert table["circle"] == {**dict.fromkeys(SHAPES, 0), "circle": 1, "hexagon": 1}
    assert table["star"]["circle"] == 1 and sum(table["star"].values()) == 1
    lines = format_confusion(table)
    assert len(lines) == 1 + len(SHAPES)
    assert lines[1].split()[0] == "circle" and lines[1].split()[-1] == "0.50"
    assert lines[2].split()[-1] == "n/a"  # no true squares


def test_the_zero_shot_shape_confusion_agrees_with_the_shape_accuracy(tmp_path: Path) -> None:
    """The table is the accuracy's own choices: its diagonal over its total is the accuracy,
    and its rows hold each true shape's scenes."""
    write_collection(tmp_path / "scenes", 60, seed=2, split="train")
    row = probe(TINY_MODEL, tmp_path / "scenes", 1000)
    table = row["shape confusion"]
    total = sum(sum(counts.values()) for counts in table.values())
    assert total == row["scenes"] > 10
    assert sum(table[s][s] for s in SHAPES) / total == pytest.approx(row["accuracy"]["shape"],
                                                                      abs=1e-4)


def test_per_shape_accuracy_and_the_resolution_towers() -> None:
    """bench/scene_shape.py: accuracy per true shape, and rn64 / rn128 are se-scenes-rn's tower
    at two input sizes with the same weights but the attention pool's position embedding (one
    row per cell of the final feature map)."""
    import torch
    from scene_shape import build_tower, per_shape

    chosen, labels = np.array([0, 0, 5, 5, 1]), np.array([0, 5, 5, 5, 0])
    accuracy = per_shape(chosen, labels)
    assert list(accuracy) == list(SHAPES)
    assert accuracy["circle"] == 0.5 and accuracy["hexagon"] == pytest.approx(2 / 3)
    assert accuracy["square"] is None
    towers = [build_tower(name, "demo", seed=0) for name in ("rn64", "rn128")]
    assert [t.image_size for t in towers] == [64, 128]
    counts = [sum(p.numel() for name, p in t.module.named_parameters()
                  if name != "attnpool.positional_embedding") for t in towers]
    assert counts[0] == counts[1] > 1_000_000
    cells = [t.module.attnpool.positional_embedding.shape[0] - 1 for t in towers]
    assert cells == [(64 // 32) ** 2, (128 // 32) ** 2]
    for tower in towers:
        with torch.no_grad():
            features = tower.module.eval()(torch.zeros(2, 3, tower.image_size, tower.image_size))
        assert features.shape == (2, tower.width)


def test_group_scenes_keep_only_the_shapes_asked_for(tmp_path: Path) -> None:
    from scene_shape import group_scenes

    write_collection(tmp_path / "scenes", 80, seed=3, split="train")
    paths, labels = group_scenes(tmp_path / "scenes")
    kept_paths, kept = group_scenes(tmp_path / "scenes", shapes=("circle", "hexagon"))
    wanted = [SHAPES.index("circle"), SHAPES.index("hexagon")]
    assert 0 < len(kept) < len(labels)
    assert set(kept) <= set(wanted)
    assert kept_paths == [p for p, label in zip(paths, labels, strict=True) if label in wanted]
