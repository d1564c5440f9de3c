"""The scene world: reproducible, truthful captions, held-out pairs kept out, files laid out."""

from __future__ import annotations

import colorsys
import csv
import itertools
import json
from collections import deque

import numpy as np
import pytest

from searchengine.demo.scenes import _COUNT_WORDS as COUNT_WORDS
from searchengine.demo.scenes import _POSITION_WORDS as POSITION_WORDS
from searchengine.demo.scenes import _RELATION_WORDS as RELATION_WORDS
from searchengine.demo.scenes import (
    COLOURS,
    HELDOUT_PAIRS,
    SCENE_COLUMNS,
    generate_scenes,
    layout,
    read_scene_attributes,
    render,
    write_collection,
)
from searchengine.errors import InvalidInputError


def test_same_seed_gives_same_scenes_and_pixels():
    first = generate_scenes(12, seed=7, split="train")
    second = generate_scenes(12, seed=7, split="train")
    assert first == second
    for a, b in zip(first, second, strict=True):
        assert render(a).tobytes() == render(b).tobytes()
    other = generate_scenes(12, seed=8, split="train")
    assert [s.captions for s in other] != [s.captions for s in first]


def test_a_longer_list_extends_a_shorter_one():
    assert generate_scenes(30, seed=3)[:10] == generate_scenes(10, seed=3)


def test_written_files_are_identical_for_the_same_seed(tmp_path):
    a = write_collection(tmp_path / "a", 5, seed=1, split="heldout")
    b = write_collection(tmp_path / "b", 5, seed=1, split="heldout")
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / name).read_bytes() == (b / name).read_bytes() for name in names)


def test_heldout_pairs_never_in_train_and_always_in_heldout():
    pairs = lambda scene: {(o.colour, o.shape) for o in scene.objects}  # noqa: E731
    train = generate_scenes(3000, seed=0, split="train")
    heldout = generate_scenes(1000, seed=0, split="heldout")
    assert not any(pairs(s) & HELDOUT_PAIRS for s in train)
    assert all(pairs(s) & HELDOUT_PAIRS for s in heldout)
    # Every colour and every shape still occurs in training, only not in those pairs.
    seen = set().union(*(pairs(s) for s in train))
    assert {c for c, _ in seen} == set(COLOURS)
    assert len(seen) == 64 - len(HELDOUT_PAIRS)


def test_captions_state_the_attributes():
    for scene in generate_scenes(400, seed=5, split="train"):
        assert len(set(scene.captions)) == len(scene.captions) == 5
        for caption in scene.captions:
            for obj in scene.objects:
                assert obj.colour in caption and obj.shape in caption, (caption, scene)
            if scene.kind == "group":
                assert any(p in caption for p in POSITION_WORDS[scene.position]), caption
                words = caption.split()
                counts = COUNT_WORDS[scene.count] + (("an",) if scene.count == 1 else ())
                assert any(c.split()[0] in words for c in counts), caption
                if scene.count > 1:
                    assert f"{scene.objects[0].shape}s" in caption or "crosses" in caption
            else:
                relations = RELATION_WORDS[scene.relation] + RELATION_WORDS[
                    {"above": "below", "below": "above", "left of": "right of",
                     "right of": "left of"}[scene.relation]]
                assert any(f" {r} " in caption for r in relations), caption


def test_unknown_split_and_bad_sizes_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="heldout"):
        generate_scenes(3, seed=0, split="test")
    with pytest.raises(InvalidInputError):
        generate_scenes(3, seed=0, image_size=8)
    with pytest.raises(InvalidInputError, match="png"):
        write_collection(tmp_path, 1, seed=0, image_format="gif")


def test_layouts_fit_the_picture_and_never_overlap():
    for scene in generate_scenes(3000, seed=11, split="train"):
        placements = layout(scene)
        assert len(placements) == scene.count
        for p in placements:
            assert 0.0 < p.x - p.r < p.x + p.r < 1.0 and 0.0 < p.y - p.r < p.y + p.r < 1.0
        for p, q in itertools.combinations(placements, 2):
            assert np.hypot(p.x - q.x, p.y - q.y) >= p.r + q.r + 0.035


def _blobs(mask: np.ndarray, min_pixels: int = 6) -> list[np.ndarray]:
    """4-connected components of a (h, w) bool mask as (m, 2) arrays of (y, x); a plain BFS."""
    seen = np.zeros_like(mask)
    blobs = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] \
                        and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pixels) >= min_pixels:
            blobs.append(np.array(pixels))
    return blobs


def _colour_blobs(image, colour: str) -> list[np.ndarray]:
    pixels = np.asarray(image, dtype=np.float32)  # (h, w, 3)
    close = np.linalg.norm(pixels - np.array(COLOURS[colour]), axis=2) < 60
    return _blobs(close)


def test_rendered_counts_and_positions_match_the_scene():
    scenes = [s for s in generate_scenes(400, seed=2, split="train") if s.background == "plain"]
    groups = [s for s in scenes if s.kind == "group"][:30]
    assert len(groups) == 30
    for scene in groups:
        blobs = _colour_blobs(render(scene), scene.objects[0].colour)
        assert len(blobs) == scene.count, scene
        y, x = np.concatenate(blobs).mean(axis=0) / scene.image_size
        expected = {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6,
                    "centre": abs(x - 0.5) < 0.1 and abs(y - 0.5) < 0.1}[scene.position]
        assert expected, (scene.position, x, y)


def test_rendered_relations_match_the_scene():
    pairs = [s for s in generate_scenes(600, seed=4, split="heldout")
             if s.kind == "pair" and s.background == "plain"
             and s.objects[0].colour != s.objects[1].colour][:20]
    assert len(pairs) == 20
    for scene in pairs:
        image = render(scene)
        (y1, x1), (y2, x2) = (np.concatenate(_colour_blobs(image, o.colour)).mean(axis=0)
                              for o in scene.objects)
        holds = {"above": y1 < y2, "below": y1 > y2, "left of": x1 < x2, "right of": x1 > x2}
        assert holds[scene.relation], scene


def test_collection_layout(tmp_path):
    folder = write_collection(tmp_path / "demo", 6, seed=0, split="heldout", captions_per_scene=3)
    images = sorted(p.name for p in (folder / "images").iterdir())
    assert images == [f"scene-{i:05d}.jpg" for i in range(6)]
    with open(folder / "captions.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "caption"]
    assert len(rows) == 1 + 6 * 3
    assert {image for image, _ in rows[1:]} == set(images)
    scenes = generate_scenes(6, seed=0, split="heldout", captions_per_scene=3)
    assert [caption for _, caption in rows[1:4]] == list(scenes[0].captions)
    with open(folder / "scenes.csv", newline="") as handle:
        assert next(csv.reader(handle)) == list(SCENE_COLUMNS)
    attributes = read_scene_attributes(folder)
    assert list(attributes) == images
    assert attributes["scene-00000.jpg"] == scenes[0].attributes()
    assert all(row["split"] == "heldout" for row in attributes.values())


def test_scene_recall_breakdown_against_a_naive_loop():
    from searchengine.demo.run import scene_recall
    from searchengine.eval.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    images = rng.standard_normal((40, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owners = np.repeat(np.arange(40), 2)  # two captions per image
    texts = images[owners] + 0.6 * rng.standard_normal((80, 8)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    attributes = [{"colour": "red" if i % 3 else "blue", "count": "" if i % 2 else "2"}
                  for i in range(40)]
    report = scene_recall("m", images, texts, owners, attributes, ks=(1, 5))
    assert report.overall == retrieval_metrics(images, texts, owners, ks=(1, 5))
    similarity = texts @ images.T
    for row in report.breakdown:
        chosen = [i for i in range(40) if attributes[i][row.attribute] == row.value]
        hits = [int(np.sum(similarity[t] >= similarity[t, owners[t]]) <= 5)
                for t in range(80) if owners[t] in chosen]
        assert row.text_to_image[5] == pytest.approx(np.mean(hits))
        image_hits = [int(any(owners[j] == i for j in np.argsort(-similarity[:, i])[:5]))
                      for i in chosen]
        assert row.image_to_text[5] == pytest.approx(np.mean(image_hits))
    assert {(r.attribute, r.value) for r in report.breakdown} == {
        ("colour", "red"), ("colour", "blue"), ("count", "2")}


@pytest.mark.parametrize("arch", ["se-scenes", "se-scenes-rn"])
def test_bundled_weights_are_small_fp16_and_load(tmp_path, arch):
    """Both scene architectures (ViT and the convolutional `se-scenes-rn`) bundle under the size
    limit and load back as the same float16-rounded weights."""
    import torch

    from searchengine.demo.run import MAX_BUNDLE_BYTES, bundle_weights
    from searchengine.encoder import Encoder
    from searchengine.models import build_model, parse_model_spec
    from searchengine.training.checkpoint import model_checkpoint

    model, _, _ = build_model(parse_model_spec(f"{arch}/random"), seed=3)
    torch.save(model_checkpoint(model, arch, 7), tmp_path / "best.pt")
    out = bundle_weights(tmp_path / "best.pt", tmp_path / "demo.pt")
    assert out.stat().st_size <= MAX_BUNDLE_BYTES
    saved = torch.load(out, weights_only=True)
    assert saved["state_dict"]["token_embedding.weight"].dtype == torch.float16
    encoder = Encoder.load(f"{arch}/{out}")
    loaded = encoder.model.state_dict()
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(loaded[name], tensor.half().float()), name


def test_demo_command_end_to_end_with_random_weights(tmp_path):
    from click.testing import CliRunner

    from searchengine.cli import cli

    home = tmp_path / "home"
    args = ["demo", "--home", str(home), "--model", "se-scenes/random", "-n", "24"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    for kind in ("text->image", "image->image", "image->text", "zero-shot", "text->image  "):
        assert kind.strip() in result.output
    assert "searchengine bench recall" in result.output
    assert len(list((home / "demo" / "images").iterdir())) == 24
    with open(home / "demo" / "captions.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["image", "caption"]
    again = CliRunner().invoke(cli, [*args, "--json"])  # reuses the collection and the index
    assert again.exit_code == 0, again.output
    assert '"image_to_text"' in again.output
    # each image hit comes with its scene's first caption, in the text and in the JSON
    with open(home / "demo" / "captions.csv", newline="") as handle:
        first: dict[str, str] = {}
        for row in csv.DictReader(handle):
            first.setdefault(row["image"], row["caption"])
    queries = json.loads(again.output)["queries"]
    for query in queries:
        if query["kind"] in ("text->image", "image->image"):
            assert query["described"] == [first[name] for name, _ in query["hits"]]
        else:
            assert "described" not in query
    name, _ = queries[0]["hits"][0]
    assert f"{name}  {first[name]}" in result.output


def test_bundled_demo_model_knows_unseen_scenes(tmp_path):
    """The shipped weights, loaded through the `demo` alias, retrieve held-out scenes (colour-shape
    pairs never trained on) far above chance: a wrong file, a broken fp16 conversion or an
    untrained model all fail this. Chance R@5 on 100 scenes is 0.05."""
    from searchengine.demo.run import evaluate_scenes

    folder = write_collection(tmp_path / "heldout", 100, seed=7, split="heldout",
                              captions_per_scene=2)
    report = evaluate_scenes("demo", folder, ks=(5,))
    assert report.images == 100 and report.captions == 200
    assert report.overall.text_to_image[5] >= 0.8
    assert report.overall.image_to_text[5] >= 0.8


# ------------------------------------------------------------- free colours and generic nouns
def _words(caption: str) -> set[str]:
    return set(caption.replace(",", " ").split())


def test_free_colour_scenes_keep_the_world_and_leave_colour_unnamed():
    from searchengine.demo.scenes import _FREE_MIN_DISTANCE

    plain = generate_scenes(1500, seed=6, split="train")
    free = generate_scenes(1500, seed=6, split="train", free_colour=0.3)
    unnamed, tints = 0, {}
    for a, b in zip(plain, free, strict=True):
        assert (a.kind, a.count, a.position, a.relation, a.background) == (
            b.kind, b.count, b.position, b.relation, b.background)
        assert [(o.shape, o.size) for o in a.objects] == [(o.shape, o.size) for o in b.objects]
        if b.objects[0].tint is None:
            assert a == b  # a scene left named is the plain world's, captions and all
            continue
        unnamed += 1
        assert len({o.shape for o in b.objects}) == len(b.objects)  # "a star above a star": no
        for obj in b.objects:
            assert obj.colour == "" and obj.tint is not None
            assert min(np.linalg.norm(np.subtract(obj.tint, c)) for c in COLOURS.values()) \
                >= _FREE_MIN_DISTANCE
            tints.setdefault(obj.shape, []).append(colorsys.rgb_to_hsv(*obj.tint)[0])
        for caption in b.captions:
            assert not _words(caption) & set(COLOURS), caption
            assert all(o.shape in caption for o in b.objects), caption
        assert b.attributes()["colour"] == ""
    assert 0.2 < unnamed / len(free) < 0.35  # pairs of one shape stay named
    # Drawn alike for every shape: no shape's colour-free captions learn a colour it lacks.
    everything = np.concatenate([hues for hues in tints.values()])
    for hues in tints.values():
        assert abs(np.median(hues) - np.median(everything)) < 0.15


def test_a_free_colour_is_what_is_drawn():
    scenes = [s for s in generate_scenes(300, seed=2, split="train", free_colour=1.0)
              if s.kind == "group" and s.background == "plain"][:10]
    assert len(scenes) == 10
    for scene in scenes:
        pixels = np.asarray(render(scene), dtype=np.float32)
        close = np.linalg.norm(pixels - np.array(scene.objects[0].tint), axis=2) < 60
        assert len(_blobs(close)) == scene.count, scene


def test_generic_nouns_agree_with_the_count():
    scenes = generate_scenes(400, seed=5, split="train", generic_nouns=0.5)
    generic = 0
    for scene in scenes:
        for caption in scene.captions:
            if scene.kind == "pair" or scene.objects[0].shape in caption:
                continue
            generic += 1
            assert ("shape" in _words(caption)) == (scene.count == 1), caption
            assert ("shapes" in _words(caption)) == (scene.count > 1), caption
            assert scene.objects[0].colour in caption, caption
    assert generic > 200


def test_free_colour_and_generic_nouns_refuse_bad_values(tmp_path):
    with pytest.raises(InvalidInputError, match="train split only"):
        generate_scenes(3, seed=0, split="heldout", free_colour=0.2)
    with pytest.raises(InvalidInputError, match="fractions from 0 to 1"):
        generate_scenes(3, seed=0, split="train", generic_nouns=1.5)
    from click.testing import CliRunner

    from searchengine.cli import cli

    result = CliRunner().invoke(cli, ["scenes", str(tmp_path / "s"), "-n", "2", "--split",
                                      "heldout", "--free-colour", "0.5"])
    assert result.exit_code != 0 and "train split only" in result.output
    assert not (tmp_path / "s" / "captions.csv").exists()


def test_scenes_command_writes_free_colour_scenes(tmp_path):
    from click.testing import CliRunner

    from searchengine.cli import cli

    result = CliRunner().invoke(cli, ["scenes", str(tmp_path / "s"), "-n", "40", "--split",
                                      "train", "--free-colour", "1", "--generic-nouns", "1",
                                      "--workers", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    attributes = read_scene_attributes(tmp_path / "s")
    assert sum(row["colour"] == "" for row in attributes.values()) > 20
    with open(tmp_path / "s" / "captions.csv", newline="") as handle:
        captions = [caption for _, caption in list(csv.reader(handle))[1:]]
    assert not any(_words(c) & set(COLOURS) for c, row in zip(
        captions, (attributes[f"scene-{i // 5:05d}.jpg"] for i in range(len(captions))),
        strict=True) if row["colour"] == "")
