"""Query arithmetic: "beach +sunset -0.5:people" and --like/--unlike images as terms.

The parser on a table of queries (ordinary ones unchanged), the combined vector against the
same arithmetic done by hand in float64 on the encoder's outputs, a negative term pushing its
matches down with the bundled `demo` model on its own scenes, image terms, the CLI and the HTTP
paths, and every bad input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, fast_ingest
from float_noise import EPS32

from searchengine.errors import InvalidInputError
from searchengine.query.arithmetic import Term, combine, has_arithmetic, parse_query

# -- the parser --------------------------------------------------------------------------------

PARSED = [
    # ordinary queries: one phrase, exactly as typed (stripped)
    ("a dog on the beach", [Term("a dog on the beach")]),
    ("a t-shirt", [Term("a t-shirt")]),
    ("well-lit room", [Term("well-lit room")]),
    ("+1 phone", [Term("+1 phone")]),  # a sign at the very start alone is no marker
    ("-5 degrees outside", [Term("-5 degrees outside")]),
    ("  +sunset  ", [Term("+sunset")]),
    ("10:30 meeting", [Term("10:30 meeting")]),
    ("rock+roll", [Term("rock+roll")]),
    ("beach-people", [Term("beach-people")]),
    ("C++ code", [Term("C++ code")]),
    # arithmetic
    ("beach +sunset -people", [Term("beach"), Term("sunset"), Term("people", -1.0)]),
    ("beach + sunset - people", [Term("beach"), Term("sunset"), Term("people", -1.0)]),
    ("beach +2:sunset -0.5:people",
     [Term("beach"), Term("sunset", 2.0), Term("people", -0.5)]),
    ("+2:beach -people", [Term("beach", 2.0), Term("people", -1.0)]),
    ("a t-shirt -red", [Term("a t-shirt"), Term("red", -1.0)]),
    ("well-lit room +a window", [Term("well-lit room"), Term("a window")]),
    ("+1 phone -case", [Term("1 phone"), Term("case", -1.0)]),
    ("10:30 meeting -people", [Term("10:30 meeting"), Term("people", -1.0)]),
    ("dog +.5:cat", [Term("dog"), Term("cat", 0.5)]),
    ("dog -1e-1:cat", [Term("dog"), Term("cat", -0.1)]),
    ("dog +0:cat", [Term("dog"), Term("cat", 0.0)]),
    ("dog +-cat", [Term("dog"), Term("-cat")]),  # only the first sign is the marker
    ("dog\t-cat", [Term("dog"), Term("cat", -1.0)]),
    ("", []),
    ("   ", []),
]


@pytest.mark.parametrize(("query", "terms"), PARSED)
def test_parse_query(query, terms):
    assert parse_query(query) == terms
    assert has_arithmetic(query) == (len(terms) > 1 or (
        len(terms) == 1 and terms[0].text != query.strip()))


BAD_QUERIES = [
    ("beach + ", "empty term"),
    ("beach -", "empty term"),
    ("beach + -people", "empty term"),
    ("beach +2:", "empty term"),
    ("beach +2: ", "empty term"),
    ("beach +2x:sunset", "unparsable weight '2x'"),
    ("beach -1.2.3:people", "unparsable weight '1.2.3'"),
    ("beach +1e999:sunset", "unparsable weight '1e999'"),
    ("beach +.:sunset", "unparsable weight '.'"),
]


@pytest.mark.parametrize(("query", "words"), BAD_QUERIES)
def test_bad_queries_say_what_to_write(query, words):
    with pytest.raises(InvalidInputError, match="e.g. '") as raised:
        parse_query(query)
    assert words in str(raised.value)


def test_combine_is_the_normalised_weighted_sum():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    weights = [1.0, 2.0, -0.5, -1.0]
    expected = sum(w * v.astype(np.float64) for w, v in zip(weights, vectors, strict=True))
    expected /= np.linalg.norm(expected)
    got = combine(vectors, weights)
    assert got.shape == (1, 16) and got.dtype == np.float32
    # the sum is taken in float64: only the final rounding to float32 differs
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=EPS32)
    one = combine(vectors[1:2], [3.0])  # one positive term: its row, bit for bit
    np.testing.assert_array_equal(one, vectors[1:2])


@pytest.mark.parametrize("weights", [[0.0], [0.0, 0.0]])
def test_combine_refuses_only_zero_weights(weights):
    with pytest.raises(InvalidInputError, match="weight 0"):
        combine(np.eye(len(weights), 4, dtype=np.float32), weights)


def test_combine_refuses_terms_that_cancel():
    vector = np.eye(1, 8, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="cancel"):
        combine(np.concatenate([vector, vector]), [1.0, -1.0])


# -- through the engine (se-tiny/random: the model's quality does not matter) ----------------


@pytest.fixture(scope="module")
def engine(indexed_home: Path):
    from searchengine.engine import Engine

    with Engine.open(indexed_home, create=False) as opened:
        yield opened


def by_hand(engine, terms: list[Term], images: list[tuple[np.ndarray, float]] = ()) -> np.ndarray:
    """(d,) float64 unit vector: the arithmetic on the encoder's outputs for each phrase."""
    rows = engine.encoder(TINY_MODEL).encode_texts([t.text for t in terms]).astype(np.float64)
    total = sum(t.weight * row for t, row in zip(terms, rows, strict=True))
    total = total + sum(w * v.astype(np.float64) for v, w in images)
    return total / np.linalg.norm(total)


def noise(engine) -> float:
    """The encoder computing one phrase in another batch differs by float noise; a few phrases
    summed and normalised carry it on, bounded here (cosine of d-dim unit vectors)."""
    return 64 * engine.encoder(TINY_MODEL).dim * EPS32


@pytest.mark.parametrize("query", [
    "a dog on the beach +a red square -0.5:a city at night",
    "+2:a blue circle -a green field",
    "sunset -people +3:sea",
])
def test_query_vector_is_the_arithmetic_done_by_hand(engine, query):
    got = engine.query_vector(query, model=TINY_MODEL)
    expected = by_hand(engine, parse_query(query))
    assert got.shape == (1, engine.encoder(TINY_MODEL).dim) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=noise(engine))
    assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-6


@pytest.mark.parametrize("query", ["a t-shirt", "well-lit room", "+1 phone", "-5 degrees"])
def test_an_ordinary_query_keeps_todays_vector_exactly(engine, query):
    today = engine.encoder(TINY_MODEL).encode_texts([query])  # Engine.search before arithmetic
    np.testing.assert_array_equal(engine.query_vector(query, model=TINY_MODEL), today)


def test_search_ranks_by_the_combined_vector(engine):
    query = "a dog on the beach +a red square -a city at night"
    result = engine.search(query, k=6, model=TINY_MODEL)
    expected = engine.search_by_vector(by_hand(engine, parse_query(query))[None].astype(
        np.float32), k=6, model=TINY_MODEL)
    assert result.query == query
    for hit, want in zip(result.hits, expected.hits, strict=True):
        assert abs(hit.score - want.score) <= noise(engine)
    plain = engine.search("a dog on the beach", k=6, model=TINY_MODEL)
    assert [h.score for h in plain.hits] != [h.score for h in result.hits]


def test_images_are_terms(engine, photo_folder):
    first, second = photo_folder / "photo_0.jpg", photo_folder / "photo_1.jpg"
    v1 = engine.image_vector(first, model=TINY_MODEL)[0][0]
    v2 = engine.image_vector(second, model=TINY_MODEL)[0][0]
    query = "a red square -a green field"
    got = engine.query_vector(query, model=TINY_MODEL, like=[first], unlike=[second])
    expected = by_hand(engine, parse_query(query), [(v1, 1.0), (v2, -1.0)])
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=noise(engine))
    # an image alone: the search is `similar`'s, and the photo is its own first hit
    alone = engine.search("", k=1, model=TINY_MODEL, like=[first])
    assert alone.hits[0].path == str(first)
    by_id = engine.query_vector("", model=TINY_MODEL, like=alone.hits[0].id)
    np.testing.assert_allclose(by_id[0], v1, rtol=0, atol=noise(engine))
    # unlike alone: the photo is the last of all
    last = engine.search("", k=9, model=TINY_MODEL, unlike=[first])
    assert last.hits[-1].path == str(first)


@pytest.mark.parametrize(("query", "images", "words"), [
    ("   ", {}, "empty query"),
    ("beach + ", {}, "empty term"),
    ("+0:beach -0:people", {}, "weight 0"),
    ("beach -beach", {}, "cancel"),
    ("beach +2x:sunset", {}, "unparsable weight"),
    ("", {"like": ["PHOTO"], "unlike": ["PHOTO"]}, "cancel"),
])
def test_bad_input_is_a_clear_error(engine, photo_folder, query, images, words):
    images = {key: [photo_folder / "photo_0.jpg" for _ in value] for key, value in images.items()}
    with pytest.raises(InvalidInputError, match=words):
        engine.search(query, model=TINY_MODEL, **images)


# -- a negative term pushes its matches down (the bundled demo model on its scenes) -------------


@pytest.fixture(scope="module")
def scene_home(tmp_path_factory: pytest.TempPathFactory):
    """A home of 24 demo scenes, all of circles: 8 with a red circle, 16 with circles of
    other colours, indexed with the bundled `demo` model. Yields (engine, {path: has red})."""
    from searchengine.demo.scenes import generate_scenes, render
    from searchengine.engine import Engine

    folder = tmp_path_factory.mktemp("circles")
    red, other = [], []
    for scene in generate_scenes(3000, seed=11, split="train", captions_per_scene=1):
        if scene.kind != "group" or scene.objects[0].shape != "circle":
            continue
        (red if scene.objects[0].colour == "red" else other).append(scene)
    chosen = red[:8] + other[:16]
    assert len(chosen) == 24
    has_red = {}
    for i, scene in enumerate(chosen):
        path = folder / f"scene-{i:02d}.jpg"
        render(scene).save(path, quality=92)
        has_red[str(path)] = scene.objects[0].colour == "red"
    with Engine.open(tmp_path_factory.mktemp("home")) as opened:
        opened.index([folder], model="demo", settings=fast_ingest(batch_size=24))
        yield opened, has_red


def test_a_negative_term_pushes_its_matches_down(scene_home):
    engine, has_red = scene_home

    def red_ranks(query: str) -> list[int]:
        hits = engine.search(query, k=24, model="demo").hits
        assert len(hits) == 24
        return [hit.rank for hit in hits if has_red[hit.path]]

    circle = np.mean(red_ranks("a circle"))
    plain, minus = red_ranks("a red circle"), red_ranks("a circle -a red circle")
    # with the demo model, red circles lead "a red circle" and none is near the top of
    # "a circle -a red circle"; a bare "-red" pushes them down too
    assert plain[:4] == [1, 2, 3, 4] and np.mean(plain) < circle
    assert min(minus) > 8 and np.mean(minus) > circle
    assert np.mean(red_ranks("a circle -red")) > circle


# -- the CLI and the HTTP API ---------------------------------------------------------------


def test_cli_search_with_arithmetic_and_images(indexed_home, photo_folder, cli_run, engine,
                                               reuse_random_encoders):
    query = "a dog on the beach +2:a red square -a city at night"
    first = photo_folder / "photo_0.jpg"
    shown = cli_run.json("search", query, "--home", indexed_home, "-k", 4,
                         "--unlike", first, "--like", "id:2")
    expected = engine.search(query, k=4, like=[2], unlike=[first]).as_dict()
    assert shown["query"] == expected["query"] == query
    assert [h["id"] for h in shown["hits"]] == [h["id"] for h in expected["hits"]]
    for hit, want in zip(shown["hits"], expected["hits"], strict=True):
        assert abs(hit["score"] - want["score"]) <= noise(engine) + 1e-6  # + JSON rounding
    table = cli_run("search", "beach +sunset -people", "--home", indexed_home, "-k", 2)
    assert table.stdout.startswith("beach +sunset -people  [")


@pytest.mark.parametrize(("args", "words"), [
    (["beach + "], "empty term"),
    (["beach +2x:sunset"], "unparsable weight"),
    (["+0:beach -0:people"], "weight 0"),
    (["beach -beach"], "cancel"),
    (["", "--like", "id:99999"], "no indexed image with id 99999"),
])
def test_cli_bad_input(indexed_home, cli_run, reuse_random_encoders, args, words):
    result = cli_run("search", *args, "--home", indexed_home, expect=1)
    assert words in result.stderr and "Traceback" not in result.stderr


def test_http_search_with_arithmetic_and_ids(engine, indexed_home, cli_run,
                                              reuse_random_encoders):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from searchengine.server import create_app

    client = TestClient(create_app(engine), raise_server_exceptions=False)
    query = "a dog on the beach +2:a red square -a city at night"
    params = {"q": query, "k": 4, "like": [2, 3], "unlike": [5]}
    response = client.get("/api/search", params=params)
    assert response.status_code == 200, response.text
    expected = cli_run.json("search", query, "--home", indexed_home, "-k", 4, "--no-serve",
                            "--like", "id:2", "--like", "id:3", "--unlike", "id:5")
    assert [h["id"] for h in response.json()["hits"]] == [h["id"] for h in expected["hits"]]
    for hit, want in zip(response.json()["hits"], expected["hits"], strict=True):
        assert abs(hit["score"] - want["score"]) <= noise(engine) + 1e-6
    for bad, status, words in [
        ({"q": "beach + "}, 400, "empty term"),
        ({"q": "beach +2x:sunset"}, 400, "unparsable weight"),
        ({"q": "beach -beach"}, 400, "cancel"),
        ({"q": "+0:beach"}, 200, ""),  # a sign at the start alone: the phrase "+0:beach"
        ({"q": "+0:beach -0:sea"}, 400, "weight 0"),
        ({"q": "", "like": [99999]}, 404, "99999"),
        ({"q": "", "like": ["x"]}, 422, "like"),
    ]:
        answer = client.get("/api/search", params=bad)
        assert answer.status_code == status, (bad, answer.text)
        assert words in str(answer.json().get("detail", ""))
    spec = client.get("/openapi.json").json()
    names = {p["name"]: p for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"like", "unlike"} <= set(names)
    assert "+sunset" in names["q"]["description"]
