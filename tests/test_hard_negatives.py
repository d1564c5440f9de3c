"""Hard negatives: swapped captions, the loss with extra text columns, gradient caching with
them, the mined batch sampler, and the CLI options."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import shape_photos

from searchengine.cli import cli
from searchengine.demo.scenes import SHAPES as SCENE_SHAPES
from searchengine.errors import InvalidInputError
from searchengine.models import build_model, parse_model_spec
from searchengine.training import loop, mining
from searchengine.training.data import Collate
from searchengine.training.gradcache import contrastive_backward
from searchengine.training.losses import clip_loss, siglip_loss
from searchengine.training.mining import MinedBatches
from searchengine.training.negatives import (
    SwapCollate,
    entry_bigrams,
    load_vocabulary,
    normalise_caption,
    parse_vocabulary,
    swapped_captions,
)
from searchengine.training.pairs import Pair
from searchengine.training.settings import TrainSettings

SCENE_VOCABULARY = Path(__file__).parents[1] / "searchengine" / "demo" / "scene_vocabulary.txt"
# As in test_training: cached and plain float64 gradients differ by summation order, ~1e-16.
EXACT = 1e-10


# ------------------------------------------------------------------------ swapped captions
def test_default_vocabulary_swaps_one_attribute_word() -> None:
    vocabulary = load_vocabulary()  # the packaged English default
    caption = "two small red circles on the left of a striped background"
    original = [(group, entry) for _, _, group, entry in vocabulary.matches(caption)]
    made = swapped_captions(caption, vocabulary, 50, np.random.default_rng(0))
    assert len(made) == len(set(made)) > 10
    changed_groups = set()
    for text in made:
        words = [(group, entry) for _, _, group, entry in vocabulary.matches(text)]
        changed = [i for i, (a, b) in enumerate(zip(original, words, strict=True)) if a != b]
        if len(changed) == 2:  # a count from two to one: its noun becomes singular, same entry
            assert [vocabulary.names[words[i][0]] for i in changed] == ["count", "shape"], text
            assert words[changed[1]][1] == original[changed[1]][1], text
            changed = changed[:1]
        assert len(changed) == 1, text  # one entry replaced (no exchange: all groups differ)
        changed_groups.add(vocabulary.names[original[changed[0]][0]])
    assert changed_groups == {"count", "size", "colour", "shapes", "position"}


def test_swaps_exchange_two_entries_of_a_group() -> None:
    vocabulary = parse_vocabulary("colour: red, blue, green")
    made = swapped_captions("a red star above a blue square", vocabulary, 20,
                            np.random.default_rng(1))
    assert "a blue star above a red square" in made
    assert len(made) == 5  # 2 replacements for each colour + the exchange


def test_swaps_are_deterministic_with_a_seed() -> None:
    vocabulary = load_vocabulary()
    caption = "three large blue stars at the top, on a plain background"
    first = swapped_captions(caption, vocabulary, 3, np.random.default_rng(7))
    assert first == swapped_captions(caption, vocabulary, 3, np.random.default_rng(7))
    others = {tuple(swapped_captions(caption, vocabulary, 3, np.random.default_rng(seed)))
              for seed in range(8)}
    assert len(others) > 1  # the seed chooses


def test_never_the_original_nor_a_true_caption_nor_a_synonym() -> None:
    vocabulary = parse_vocabulary("colour: red, blue\nsize: small | little, large")
    for seed in range(20):
        made = swapped_captions("A small red ball.", vocabulary, 10, np.random.default_rng(seed),
                                true_captions=["a small  Blue ball"])
        assert made == ["A large red ball."]  # "blue" is true, "little" means "small"
    assert swapped_captions("a ball", vocabulary, 3, np.random.default_rng(0)) == []
    assert normalise_caption(" A  small, Blue ball. ") == "a small blue ball"


def test_only_combinations_the_training_captions_show_are_made() -> None:
    """A held-out combination ("a red square" when no red square is ever described) is unknown,
    not false: as a negative it would only teach that its text matches nothing."""
    vocabulary = parse_vocabulary("colour: red, blue\nshape: circle, square")
    seen = frozenset().union(*(entry_bigrams(text, vocabulary)
                               for text in ("a red circle", "a blue square", "a blue circle")))
    for seed in range(10):
        rng = np.random.default_rng(seed)
        assert swapped_captions("a red circle", vocabulary, 5, rng, seen_bigrams=seen) == [
            "a blue circle"]
    anything = swapped_captions("a red circle", vocabulary, 5, np.random.default_rng(0))
    assert sorted(anything) == ["a blue circle", "a red square"]


def test_articles_agree_with_the_swapped_word() -> None:
    vocabulary = parse_vocabulary("colour: red, orange")
    made = swapped_captions("An orange star above a red cross", vocabulary, 5,
                            np.random.default_rng(0))
    assert set(made) == {"A red star above a red cross", "An orange star above an orange cross",
                         "A red star above an orange cross"}  # the last one an exchange


def _scene_grammar(caption: str) -> tuple[int, str]:
    """(count, noun) of a scene group caption, asserting that its count, noun and "there is/are"
    agree as the scene world's own captions do."""
    words = {"a single": 1, "one": 1, "a pair of": 2, "two": 2, "three": 3}
    match = re.search(r"(?:^|[\s,])(a single|one|a pair of|two|three) (?:(?:small|little|large|"
                      r"big) )?\w+ (\w+)", caption)
    assert match is not None, caption
    count, noun = words[match.group(1)], match.group(2)
    assert (noun in SCENE_SHAPES) == (count == 1), caption  # "circle" / "circles"
    if "there " in caption:
        assert ("there is " in caption) == (count == 1), caption
    return count, noun


def test_count_swaps_keep_noun_and_verb_in_agreement() -> None:
    """A count swapped between one and more changes its noun and verb with it, as the scene
    world's true captions do; otherwise the swap is told apart by grammar, not by counting."""
    from searchengine.demo.scenes import generate_scenes

    vocabulary = load_vocabulary(SCENE_VOCABULARY)
    number_changes = 0
    for scene in generate_scenes(60, seed=5):
        if scene.kind != "group":
            continue
        for caption in scene.captions:
            if not any(w in caption.split() for w in ("one", "single", "two", "pair", "three")):
                continue  # "a red circle": the article "a" is not a count word
            count, _ = _scene_grammar(caption)
            for text in swapped_captions(caption, vocabulary, 40, np.random.default_rng(0)):
                swapped, _ = _scene_grammar(text)
                number_changes += (swapped == 1) != (count == 1)
    assert number_changes > 50
    assert set(swapped_captions("There is one red star", vocabulary, 40, np.random.default_rng(1),
                                seen_bigrams=None)) >= {"There are two red stars",
                                                        "There are a pair of red stars",
                                                        "There are three red stars"}


def test_count_swaps_without_a_noun_keep_their_number() -> None:
    vocabulary = parse_vocabulary("count: one, two, three\nshape: circle, square\n"
                                  "shapes: circles, squares\n"
                                  "@singular count: one\n@plural shape: shapes\n")
    for seed in range(10):
        made = swapped_captions("two of the circles", vocabulary, 5, np.random.default_rng(seed))
        assert sorted(made) == ["three of the circles", "two of the squares"]  # never "one of"
    assert sorted(swapped_captions("two circles", vocabulary, 5, np.random.default_rng(0))) == [
        "one circle", "three circles", "two squares"]


def test_an_exchange_of_two_counts_changes_both_nouns() -> None:
    vocabulary = load_vocabulary(SCENE_VOCABULARY)
    made = swapped_captions("one red circle above two blue squares", vocabulary, 60,
                            np.random.default_rng(2))
    assert "two red circles above one blue square" in made
    for text in made:  # every count's next noun is of its number
        words = [(vocabulary.names[group], entry) for *_, group, entry in vocabulary.matches(text)]
        counts = [i for i, (name, _) in enumerate(words) if name == "count"]
        assert len(counts) == 2, text
        for i in counts:
            noun = next(name for name, _ in words[i + 1:] if name in ("shape", "shapes"))
            assert noun == ("shape" if words[i][1] == 0 else "shapes"), text


def test_a_one_word_noun_only_agrees_with_its_count() -> None:
    """"two red shapes" (`scenes --generic-nouns`): "shape" is never swapped for a shape word
    (it may be true), only inflected when the count changes number."""
    vocabulary = load_vocabulary(SCENE_VOCABULARY)
    made = swapped_captions("there are two red shapes on the left", vocabulary, 40,
                            np.random.default_rng(3))
    assert {"there is one red shape on the left", "there are three red shapes on the left",
            "there are two blue shapes on the left"} <= set(made)
    for text in made:
        assert not set(text.split()) & set(SCENE_SHAPES), text
        count, _ = _scene_grammar(text.replace("shapes", "circles").replace("shape", "circle"))
        assert ("shapes" in text.split()) == (count > 1), text
    with pytest.raises(InvalidInputError, match="at least two entries"):
        parse_vocabulary("count: one, two\nthing: shape\n")


def test_without_agreement_lines_counts_swap_freely() -> None:
    """A vocabulary without `@` lines behaves as before them."""
    vocabulary = parse_vocabulary("count: one, two\nshapes: circles, squares")
    assert sorted(swapped_captions("two circles", vocabulary, 5, np.random.default_rng(0))) == [
        "one circles", "two squares"]


@pytest.mark.parametrize(("text", "message"), [
    ("colour red, blue", "expected `name:"),
    ("colour: red", "at least two entries"),
    ("colour: red, blue\nshade: red, pink", "'red' is in 'colour' and again in 'shade'"),
    ("colour: red, , blue", "an empty word"),
    ("# only a comment\n", "no word groups"),
    ("a: x, y\na: z, w", "given twice"),
    # number agreement lines
    ("count: one, two\n@singular count: three", "'three' is not an entry of group 'count'"),
    ("count: one, two\n@singular count: one, two", "leaves it a plural entry"),
    ("count: one, two\n@singular size: one", "no group 'size'"),
    ("a: x, y\nb: xs, ys, zs\n@plural a: b", "need as many entries each"),
    ("a: x, y\nb: xs, ys\nc: p, q\n@plural a: b\n@plural c: b", "more than once"),
    ("a: x, y\nb: xs, ys\n@singular a: x\n@plural a: b", "both a count and a noun"),
    ("a: x, y\n@verbs: is are", "expected `@verbs:"),
    ("a: x, y\n@verbs: is = are, is = were", "each verb may appear once"),
    ("a: x, y\n@number a: b", "expected `@singular GROUP:"),
])
def test_malformed_vocabulary_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")) as error:
        parse_vocabulary(text, source="words.txt")
    assert str(error.value).startswith("words.txt:")  # names the file (and the line, if one)


def test_missing_vocabulary_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no swap vocabulary file"):
        load_vocabulary(tmp_path / "absent.txt")


def test_scene_vocabulary_covers_the_scene_world() -> None:
    from searchengine.demo.scenes import COLOURS as SCENE_COLOURS
    from searchengine.demo.scenes import SHAPES as SCENE_SHAPES
    from searchengine.demo.scenes import generate_scenes

    vocabulary = load_vocabulary(SCENE_VOCABULARY)
    words = {s for group in vocabulary.groups for entry in group for s in entry}
    assert set(SCENE_COLOURS) | set(SCENE_SHAPES) <= words
    for scene in generate_scenes(20, seed=3):
        for caption in scene.captions:
            made = swapped_captions(caption, vocabulary, 3, np.random.default_rng(0),
                                    true_captions=scene.captions)
            assert len(made) == 3, caption  # every scene caption has words to swap


# ------------------------------------------------------------------------ the batch side
def test_swap_collate_masks_a_swap_that_is_true_of_another_image() -> None:
    """Image 0 is a red ball, image 1 a blue ball: the swap "a blue ball" of image 0's caption is
    a negative of image 0 but a true caption of image 1, so it is masked for image 1 only; and
    image 2, which has both captions, never gets the other as a swap."""
    _, _, tokenizer = build_model(parse_model_spec("se-tiny/random"), seed=0)
    vocabulary = parse_vocabulary("colour: red, blue")
    pairs = [Pair(b"", "a red ball", "0"), Pair(b"", "a blue ball", "1"),
             Pair(b"", "a red ball", "2"), Pair(b"", "a Blue ball.", "2")]
    collate = SwapCollate(Collate(tokenizer), tokenizer, pairs, [0, 1, 2, 2], vocabulary,
                          per_caption=2, seed=0)
    pixels = torch.zeros(3, 8, 8)
    batch = collate([(pixels, "a red ball", 0), (pixels, "a blue ball", 1),
                     (pixels, "a red ball", 2)])
    # image 0 -> "a blue ball", image 1 -> "a red ball", image 2: both colours are true of it
    assert batch.extra_tokens is not None and batch.extra_mask is not None
    torch.testing.assert_close(batch.extra_tokens, tokenizer(["a blue ball", "a red ball"]))
    assert batch.extra_mask.tolist() == [[False, True], [True, False], [True, True]]
    assert batch.tokens.shape[0] == 3 and batch.image_ids.tolist() == [0, 1, 2]


# ------------------------------------------------------------------------ the loss
def _unit(rows: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(rows, 4, generator=generator, dtype=torch.float64), dim=1)


def _reference(images, texts, extra, ids, mask, scale, bias, loss_name) -> float:
    """The loss by hand, cell by cell in float64 Python arithmetic."""
    n, m = len(images), len(extra)
    total = 0.0
    for i in range(n):
        same = [j for j in range(n) if j == i or ids[j] != ids[i]]  # other captions of i: out
        cells = [scale * float(images[i] @ texts[j]) for j in same]
        cells += [scale * float(images[i] @ extra[k]) for k in range(m) if not mask[i][k]]
        column = [scale * float(images[j] @ texts[i]) for j in range(n) if j == i or
                  ids[j] != ids[i]]
        own = scale * float(images[i] @ texts[i])
        if loss_name == "clip":
            total += (-own + math.log(sum(math.exp(v) for v in cells))) / 2
            total += (-own + math.log(sum(math.exp(v) for v in column))) / 2
        else:
            for j in range(n):
                label = 1 if ids[j] == ids[i] else -1
                total += math.log1p(math.exp(-label * (scale * float(images[i] @ texts[j])
                                                       + bias)))
            total += sum(math.log1p(math.exp(scale * float(images[i] @ extra[k]) + bias))
                         for k in range(m) if not mask[i][k])
    return total / n


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_loss_with_extra_text_columns_matches_a_hand_computation(loss_name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    images, texts, extra = _unit(4, generator), _unit(4, generator), _unit(5, generator)
    ids = torch.tensor([0, 0, 1, 2])
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = True
    scale, bias = 4.0, -1.5
    arguments = {"extra_text_embeddings": extra, "extra_mask": mask}
    if loss_name == "clip":
        got = clip_loss(images, texts, torch.tensor(math.log(scale)), ids, **arguments)
    else:
        got = siglip_loss(images, texts, torch.tensor(math.log(scale)), torch.tensor(bias), ids,
                          **arguments)
    expected = _reference(images, texts, extra, ids.tolist(), mask.tolist(), scale, bias,
                          loss_name)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)
    unmasked = _reference(images, texts, extra, ids.tolist(), [[False] * 5] * 4, scale, bias,
                          loss_name)
    assert abs(unmasked - expected) > 1e-3  # the mask matters in this case


def test_extra_shapes_are_checked() -> None:
    eye = torch.eye(3)
    with pytest.raises(InvalidInputError, match="extra text embeddings"):
        clip_loss(eye, eye, torch.tensor(0.0), extra_text_embeddings=torch.ones(2, 4))
    with pytest.raises(InvalidInputError, match="extra_mask"):
        clip_loss(eye, eye, torch.tensor(0.0), extra_text_embeddings=torch.ones(2, 3),
                  extra_mask=torch.zeros(2, 3, dtype=torch.bool))


# ------------------------------------------------------------------------ gradient caching
def _gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _relative_errors(got: dict, expected: dict) -> dict:
    return {name: float((got[name] - tensor).norm() / tensor.norm().clamp_min(1e-300))
            for name, tensor in expected.items()}


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_gradient_caching_with_extra_negatives_gives_the_full_batch_gradients(
    loss_name: str,
) -> None:
    model, _, tokenizer = build_model(parse_model_spec("se-tiny/random"), seed=1)
    model = model.double().train()
    pixels = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double()
    captions = [f"a caption number {i}" for i in range(7)]
    extra_captions = [f"a swapped caption {i}" for i in range(6)]
    tokens = tokenizer(captions + extra_captions)  # (7 + 6, L): chunks of 3 run past the images
    image_ids = torch.tensor([0, 0, 1, 2, 3, 3, 4])
    mask = torch.zeros(7, 6, dtype=torch.bool)
    mask[2, 1] = mask[5, 4] = True
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)

    def loss_function(images, texts):
        extra = {"extra_text_embeddings": texts[7:], "extra_mask": mask} if len(texts) > 7 else {}
        if loss_name == "siglip":
            return siglip_loss(images, texts[:7], model.logit_scale, bias, image_ids, **extra)
        return clip_loss(images, texts[:7], model.logit_scale, image_ids, **extra)

    def run(micro_batch, token_rows):
        model.zero_grad(set_to_none=True)
        bias.grad = None
        loss = contrastive_backward(model, pixels, tokens[:token_rows], loss_function,
                                    micro_batch=micro_batch)
        return loss, _gradients(model), bias.grad

    reference_loss, reference, reference_bias = run(None, 13)
    cached_loss, cached, cached_bias = run(3, 13)
    assert cached_loss.item() == pytest.approx(reference_loss.item(), rel=EXACT)
    assert cached.keys() == reference.keys() and "logit_scale" in cached
    errors = _relative_errors(cached, reference)
    assert max(errors.values()) < EXACT, {n: e for n, e in errors.items() if e >= EXACT}
    if loss_name == "siglip":
        assert float((cached_bias - reference_bias).abs() / reference_bias.abs()) < EXACT
    _, without, _ = run(None, 7)  # the extra negatives do change the gradients
    assert max(_relative_errors(without, reference).values()) > 1e-3


# ------------------------------------------------------------------------ the mined sampler
def _clustered(clusters: int, size: int, dim: int = 16, seed: int = 0):
    """((clusters * size, dim) float32 unit vectors in tight, far-apart clusters, (n,) cluster
    of each), shuffled so that a cluster's members are not neighbours in index order."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:clusters]  # orthonormal rows
    labels = np.repeat(np.arange(clusters), size)
    vectors = centres[labels] + 0.05 * rng.normal(size=(clusters * size, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(len(vectors))
    return vectors[order].astype(np.float32), labels[order]


def test_mined_batches_are_made_of_nearest_neighbours() -> None:
    vectors, cluster = _clustered(8, 8)
    calls = []

    def embed() -> np.ndarray:
        calls.append(1)
        return vectors

    sampler = MinedBatches(64, 16, seed=0, start=0, total=8, group=8, refresh_every=3,
                           embed=embed, image_ids=list(range(64)))
    batches = list(sampler)
    assert len(batches) == 8 and all(len(batch) == 16 for batch in batches)
    for batch in batches:  # two groups, each a whole cluster: anchor + its 7 nearest
        assert sorted(np.bincount(cluster[batch], minlength=8).tolist())[-2:] == [8, 8]
    for epoch in (batches[:4], batches[4:]):  # every pair once per epoch
        assert sorted(i for batch in epoch for i in batch) == list(range(64))
    assert len(calls) == 3  # steps 0, 3 and 6


def test_a_mined_group_holds_the_anchors_nearest_pairs_of_other_images() -> None:
    """Random unit vectors, two captions per image: the first group of the first batch is its
    anchor then the anchor's nearest pairs by exact float64 cosine, skipping its own image."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(40, 8))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    image_ids = [i // 2 for i in range(40)]
    sampler = MinedBatches(40, 10, seed=1, start=0, total=1, group=5, refresh_every=10,
                           embed=lambda: vectors, image_ids=image_ids)
    batch = next(iter(sampler))
    anchor, members = batch[0], batch[1:5]
    exact = vectors.astype(np.float64) @ vectors[anchor].astype(np.float64)  # (40,)
    others = [j for j in range(40) if image_ids[j] != image_ids[anchor]]
    best = sorted(exact[others], reverse=True)[:4]
    np.testing.assert_allclose(exact[members], best, rtol=0, atol=1e-5)
    assert all(image_ids[j] != image_ids[anchor] for j in members)


def test_past_the_exact_limit_mining_finds_the_neighbours_with_an_ivf_index(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Above EXACT_LIMIT pairs the neighbours come from an IVF index: on 2,000 captions in 50
    tight clusters of 40, every pair's 33 neighbours are in its own cluster, as the flat
    index's are."""
    rng = np.random.default_rng(3)
    centres = np.linalg.qr(rng.normal(size=(64, 64)))[0][:50]  # (50, 64) orthonormal
    cluster = rng.permutation(np.repeat(np.arange(50), 40))  # (2000,)
    vectors = centres[cluster] + 0.05 * rng.normal(size=(2000, 64))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def same_cluster_share() -> float:
        sampler = MinedBatches(2000, 64, seed=0, start=0, total=1, group=8, refresh_every=1,
                               embed=lambda: vectors, image_ids=list(range(2000)))
        neighbours = sampler.neighbours()  # (2000, 33)
        assert neighbours.shape == (2000, 33) and (neighbours >= 0).all()
        return float((cluster[neighbours] == cluster[:, None]).mean())

    with caplog.at_level(logging.INFO, logger="searchengine.training.mining"):
        assert same_cluster_share() == 1.0
        monkeypatch.setattr(mining, "EXACT_LIMIT", 1000)
        assert same_cluster_share() == 1.0
    kinds = [m for m in caplog.messages if "mined batches" in m]
    assert "(flat index)" in kinds[0] and "(ivf index)" in kinds[1], kinds


def test_mined_batches_refuse_a_batch_larger_than_the_data() -> None:
    with pytest.raises(InvalidInputError, match="lower --batch-size"):
        MinedBatches(5, 8, seed=0, start=0, total=1, group=4, refresh_every=1,
                     embed=lambda: np.zeros((5, 4), np.float32), image_ids=list(range(5)))


# ------------------------------------------------------------------------ settings and CLI
@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 generated images (3 colours x 2 shapes), two captions each."""
    folder = tmp_path_factory.mktemp("pairs")
    lines = ["image,caption"]
    for name, colour, shape in shape_photos(folder, colors=3):
        lines += [f"{name},a {colour} {shape}", f"{name},one {colour} {shape} in the middle"]
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return folder / "pairs.csv"


def test_settings_refuse_bad_hard_negative_options() -> None:
    with pytest.raises(InvalidInputError, match="choices: mined, swapped, both"):
        TrainSettings(hard_negatives="random")
    with pytest.raises(InvalidInputError, match="--hard-negatives swapped or both"):
        TrainSettings(swap_vocabulary="words.txt")
    with pytest.raises(InvalidInputError, match="refresh_every must be at least 1"):
        TrainSettings(hard_negatives="mined", refresh_every=0)


def test_a_run_with_a_missing_vocabulary_fails_before_training(
    pairs_csv: Path, tmp_path: Path
) -> None:
    settings = TrainSettings(model="se-tiny/random", batch_size=4, steps=1, workers=0,
                             progress=False, device="cpu", val_fraction=0.34,
                             hard_negatives="swapped", swap_vocabulary=str(tmp_path / "no.txt"))
    with pytest.raises(InvalidInputError, match="no swap vocabulary file"):
        loop.train(tmp_path / "run", settings, pairs=pairs_csv)


def _cli_train(pairs_csv: Path, out: Path, *options: str):
    return CliRunner().invoke(cli, [
        "train", str(pairs_csv), "--model", "se-tiny/random", "--out", str(out),
        "--batch-size", "4", "--lr", "1e-3", "--workers", "0", "--device", "cpu",
        "--val-fraction", "0.34", *options,
    ])


def test_cli_hard_negative_options_and_their_bad_input(pairs_csv: Path, tmp_path: Path) -> None:
    unknown = _cli_train(pairs_csv, tmp_path / "a", "--hard-negatives", "random")
    assert unknown.exit_code == 2 and "'mined', 'swapped', 'both'" in unknown.output
    missing = _cli_train(pairs_csv, tmp_path / "b", "--hard-negatives", "swapped",
                         "--swap-vocabulary", str(tmp_path / "absent.txt"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    malformed = tmp_path / "words.txt"
    malformed.write_text("colour red blue\n")
    bad = _cli_train(pairs_csv, tmp_path / "c", "--hard-negatives", "both",
                     "--swap-vocabulary", str(malformed), "--steps", "1")
    assert bad.exit_code == 1 and "words.txt:1: expected `name:" in bad.output
    alone = _cli_train(pairs_csv, tmp_path / "d", "--swap-vocabulary", str(malformed))
    assert alone.exit_code == 1 and "--hard-negatives swapped or both" in alone.output


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_cli_train_with_both_hard_negatives_end_to_end(
    pairs_csv: Path, tmp_path: Path, loss_name: str
) -> None:
    vocabulary = tmp_path / "words.txt"
    vocabulary.write_text("colour: red, green, blue\nshape: circle, square\n")
    out = tmp_path / "run"
    result = _cli_train(pairs_csv, out, "--hard-negatives", "both", "--swap-vocabulary",
                        str(vocabulary), "--swaps-per-caption", "2", "--refresh-every", "2",
                        "--mine-group", "2", "--micro-batch", "3", "--steps", "3",
                        "--eval-every", "3", "--loss", loss_name, "--json",
                        *(["--swap-any"] if loss_name == "siglip" else []))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["steps"] == 3
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_resumed_mined_run_draws_the_uninterrupted_runs_batches(
    pairs_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """The checkpoint keeps the mined sampler's state and the batches a loader had prefetched
    (`workers` 1: two ahead), so a run resumed mid-epoch trains on the same batches, with the
    same losses, as the run never stopped. Before, the resumed epoch guessed which pairs were
    drawn and refreshed its neighbours at the resume step."""
    settings = TrainSettings(model="se-tiny/random", batch_size=4, lr=1e-3, steps=7,
                             eval_every=7, save_every=3, workers=workers, progress=False,
                             device="cpu", val_fraction=0.34, hard_negatives="mined",
                             refresh_every=2, mine_group=2)
    original_step = loop._Run._step
    trained: dict[str, list[tuple[int, list[int], float]]] = {"whole": [], "cut": []}

    def recording_step(run, step, batch, *, into: str, stop_at: int | None = None):
        if step == stop_at:
            raise KeyboardInterrupt
        loss = original_step(run, step, batch)
        trained[into].append((step, batch.image_ids.tolist(), loss))
        return loss

    def use(**how) -> None:
        monkeypatch.setattr(loop._Run, "_step",
                            lambda run, step, batch: recording_step(run, step, batch, **how))

    use(into="whole")
    loop.train(tmp_path / "whole", settings, pairs=pairs_csv)
    use(into="cut", stop_at=5)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tmp_path / "cut", settings, pairs=pairs_csv)
    use(into="cut")
    loop.train(tmp_path / "cut", settings, pairs=pairs_csv, resume=True)

    whole = trained["whole"]
    resumed = [entry for entry in trained["cut"] if entry[0] >= 3][-4:]  # steps 3..6, resumed
    assert [step for step, _, _ in resumed] == [3, 4, 5, 6]
    assert [ids for _, ids, _ in resumed] == [ids for _, ids, _ in whole[3:]]
    np.testing.assert_allclose([v for _, _, v in resumed], [v for _, _, v in whole[3:]],
                               rtol=1e-5)
