"""The server under concurrent requests: text sentences batched into few encoder calls, searches
beside each other, slow work (a long `classify`) in a lane of its own.

Nothing here measures time: order is checked with events and with what is still running
(`bench/serve.py` takes the figures).
"""

from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from conftest import TINY_MODEL, write_image  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from float_noise import score_noise  # noqa: E402

from searchengine.errors import InvalidInputError  # noqa: E402
from searchengine.server.batcher import TextBatcher  # noqa: E402

DIM = 8
PATIENCE = 120.0  # seconds before a wait that should end at once is declared hung (not a bound)


def text_vectors(model: str, texts: list[str]) -> np.ndarray:
    """(n, DIM) float32 unit vectors, a fixed function of (model, text)."""
    rows = [np.random.default_rng(zlib.crc32(f"{model}|{t}".encode())).normal(size=DIM)
            for t in texts]
    matrix = np.asarray(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting for {what} after {PATIENCE} s")
        time.sleep(0.005)


class GatedEncoder:
    """`text_vectors`, recording each call's texts; the first call waits for `release`."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []  # (model, texts) of each call
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, model: str, texts: list[str]) -> np.ndarray:
        self.calls.append((model, list(texts)))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(PATIENCE)
        if any(text.startswith("refused") for text in texts):
            raise InvalidInputError("this sentence is refused")
        return text_vectors(model, texts)


def test_sentences_that_arrive_while_the_model_works_share_its_next_call():
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder, max_batch=64, max_wait=0.0)
    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(batcher.encode, "m", "the first sentence")
        assert encoder.entered.wait(PATIENCE)  # the model is busy with it
        texts = [f"sentence {i}" for i in range(10)] + ["sentence 3"]  # one asked twice
        others = [pool.submit(batcher.encode, "m", text) for text in texts]
        wait_until(lambda: batcher.waiting == len(texts), "the sentences to queue")
        encoder.release.set()
        answers = [future.result(PATIENCE) for future in others]
        first_answer = first.result(PATIENCE)
    batcher.close()

    assert encoder.calls[0] == ("m", ["the first sentence"])
    assert len(encoder.calls) == 2 and sorted(encoder.calls[1][1]) == sorted(set(texts))
    np.testing.assert_array_equal(first_answer, text_vectors("m", ["the first sentence"]))
    for text, answer in zip(texts, answers, strict=True):
        assert answer.shape == (1, DIM) and answer.dtype == np.float32
        np.testing.assert_array_equal(answer, text_vectors("m", [text]))
    assert (batcher.calls, batcher.texts) == (2, 11)


def test_a_refused_sentence_fails_alone_and_models_are_not_mixed():
    encoder = GatedEncoder()
    batcher = TextBatcher(encoder, max_batch=64, max_wait=0.0)
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(batcher.encode, "m", "warm")
        assert encoder.entered.wait(PATIENCE)
        asked = [("m", "a dog"), ("m", "refused sentence"), ("other", "a dog"), ("m", "a cat")]
        futures = [pool.submit(batcher.encode, model, text) for model, text in asked]
        wait_until(lambda: batcher.waiting == len(asked), "the sentences to queue")
        encoder.release.set()
        first.result(PATIENCE)
        with pytest.raises(InvalidInputError, match="refused"):
            futures[1].result(PATIENCE)
        for (model, text), future in zip(asked, futures, strict=True):
            if not text.startswith("refused"):
                np.testing.assert_array_equal(future.result(PATIENCE), text_vectors(model, [text]))
    batcher.close()
    assert ("other", ["a dog"]) in encoder.calls  # the other model's sentence: its own call
    tried = [sorted(texts) for model, texts in encoder.calls if model == "m"]
    assert ["a cat", "a dog", "refused sentence"] in tried  # together first, then one by one


def test_the_batcher_waits_a_little_for_company_when_idle():
    encoder = GatedEncoder()
    encoder.release.set()
    batcher = TextBatcher(encoder, max_batch=3, max_wait=PATIENCE)  # waits until 3 are there
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.encode, "m", f"s{i}") for i in range(3)]
        for future in futures:
            future.result(PATIENCE)
    batcher.close()
    assert [sorted(texts) for _, texts in encoder.calls] == [["s0", "s1", "s2"]]


def gate_order(holder: tuple[str, bool], waiting: list[tuple[str, bool]]) -> list[str]:
    """The order in which calls pass a ModelGate: `holder` (name, urgent) holds it while the
    `waiting` calls queue one after another, then it lets go."""
    from searchengine.server.gate import ModelGate

    gate = ModelGate()
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.turn(urgent=holder[1]):
            holding.set()
            assert release.wait(PATIENCE)
            order.append(holder[0])

    def call(name: str, urgent: bool) -> None:
        with gate.turn(urgent=urgent):
            order.append(name)

    with ThreadPoolExecutor(len(waiting) + 1) as pool:
        futures = [pool.submit(hold)]
        assert holding.wait(PATIENCE)
        for queued, (name, urgent) in enumerate(waiting, start=1):
            futures.append(pool.submit(call, name, urgent))
            wait_until(lambda n=queued: gate.waiting == n, f"{name} to wait")
        release.set()
        for future in futures:
            future.result(PATIENCE)
    return order


def test_a_waiting_search_batch_goes_before_waiting_slow_work():
    """While slow work holds the gate, a slow call and then an urgent one queue: the urgent one
    runs next, then the slow one; never two at once."""
    order = gate_order(("first slow", False), [("second slow", False), ("urgent", True)])
    assert order == ["first slow", "urgent", "second slow"]


def test_slow_work_gets_every_other_turn_while_searches_keep_coming():
    """An urgent call holds the gate while a slow one and another urgent one wait: the slow one
    goes next (it waited through an urgent turn), so searches cannot starve it."""
    order = gate_order(("first urgent", True), [("slow", False), ("second urgent", True)])
    assert order == ["first urgent", "slow", "second urgent"]


def test_slow_calls_take_the_gate_chunk_by_chunk():
    from searchengine.server.gate import ModelGate, SlowCalls

    turns: list[list[str]] = []
    gate = ModelGate()

    def encode(texts: list[str]) -> np.ndarray:
        assert gate.busy  # called inside a turn
        turns.append(list(texts))
        return text_vectors("m", texts)

    texts = [f"label {i}" for i in range(10)]
    vectors = SlowCalls(encode, gate, chunk=4)(texts)
    assert turns == [texts[:4], texts[4:8], texts[8:]]
    np.testing.assert_array_equal(vectors, text_vectors("m", texts))


# -- through the app ------------------------------------------------------------------------

QUERIES = [f"a photo of {thing}" for thing in
           ("a dog", "a red car", "the sea", "a cake", "a city at night", "two cats", "snow",
            "a forest path", "a bridge", "a kitchen", "a child", "boats")]


@pytest.fixture(scope="module")
def service_client(indexed_home: Path):
    from searchengine.engine import Engine
    from searchengine.server import ServerSettings, create_app
    from searchengine.settings import EncoderSettings

    engine = Engine.open(indexed_home, encoder_settings=EncoderSettings(device="cpu"))
    app = create_app(engine, ServerSettings(model=TINY_MODEL, max_labels=1000))
    yield TestClient(app), app.state.service
    app.state.service.close()
    engine.close()


def search(client: TestClient, query: str) -> dict:
    response = client.get("/api/search", params={"q": query, "k": 5, "exact_scores": "true"})
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_answer(got: dict, expected: dict) -> None:
    """Same hits in the same order, scores equal within float noise (a batch of sentences is
    other matrix shapes than one sentence); ids may swap only where scores tie within it."""
    noise = 4 * score_noise(512)
    assert got["query"] == expected["query"] and got["model"] == expected["model"]
    assert len(got["hits"]) == len(expected["hits"])
    for hit, want in zip(got["hits"], expected["hits"], strict=True):
        assert hit["rank"] == want["rank"]
        assert abs(hit["score"] - want["score"]) <= noise
        if hit["id"] != want["id"]:
            tied = [h for h in expected["hits"] if abs(h["score"] - hit["score"]) <= noise]
            assert hit["id"] in {h["id"] for h in tied}, (hit, want)


def test_concurrent_searches_answer_what_sequential_ones_answer(service_client):
    client, service = service_client
    sequential = {query: search(client, query) for query in QUERIES}
    calls_before, texts_before = service.batcher.calls, service.batcher.texts
    with ThreadPoolExecutor(16) as pool:
        asked = QUERIES * 4
        answers = list(pool.map(lambda query: search(client, query), asked))
    for query, answer in zip(asked, answers, strict=True):
        assert_same_answer(answer, sequential[query])
    assert service.batcher.texts - texts_before <= len(asked)  # a repeated sentence: once a call
    assert service.batcher.calls > calls_before


def test_text_searches_finish_while_a_long_classify_is_still_running(service_client, tmp_path):
    """A classify of 1000 labels x 7 templates (7000 sentences) is started first; text searches
    sent once it runs all answer before it ends (with one engine lock they would wait for it)."""
    client, service = service_client
    image = write_image(tmp_path / "query.png", seed=7).read_bytes()
    labels = ",".join(f"label number {i}" for i in range(1000))
    finished: list[str] = []

    def classify() -> dict:
        response = client.post("/api/classify", files={"image": ("q.png", image, "image/png")},
                               data={"labels": labels})
        finished.append("classify")
        return response

    expected = {query: search(client, query) for query in QUERIES[:4]}
    with ThreadPoolExecutor(1) as pool:
        long_one = pool.submit(classify)
        wait_until(lambda: service.lanes.running("slow") == 1 or long_one.done(),
                   "the classification to start")
        for query in QUERIES[:4]:
            assert_same_answer(search(client, query), expected[query])
            finished.append(query)
        assert finished == QUERIES[:4], "the classification ended before the text searches"
        response = long_one.result(PATIENCE)
    assert response.status_code == 200, response.text
    assert len(response.json()["labels"]) == 1000


def test_thumbnails_and_similar_are_served_while_a_long_classify_runs(service_client, tmp_path):
    client, service = service_client
    image = write_image(tmp_path / "query.png", seed=8).read_bytes()
    labels = ",".join(f"thing {i}" for i in range(1000))
    done = threading.Event()

    def classify() -> None:
        client.post("/api/classify", files={"image": ("q.png", image, "image/png")},
                    data={"labels": labels})
        done.set()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(classify)
        wait_until(lambda: service.lanes.running("slow") == 1 or done.is_set(),
                   "the classification to start")
        assert client.get("/api/images/1/thumbnail", params={"size": 128}).status_code == 200
        assert client.get("/api/similar/1", params={"k": 3}).json()["hits"][0]["id"] == 1
        assert not done.is_set(), "the classification ended before the thumbnail and similar"
