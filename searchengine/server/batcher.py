"""Text encodings for many request threads in few model calls (a micro-batcher).

    batcher = TextBatcher(lambda model, texts: engine.encoder(model).encode_texts(texts))
    vector = batcher.encode("ViT-B-32/openai", "a dog on the beach")  # (1, d) float32

A request thread hands its sentence to one worker thread and waits. The worker takes the first
waiting sentence, gathers those that arrive within `max_wait` seconds of it (at once, when it
already waited while the previous call ran) up to `max_batch`, encodes them in one model call and
hands each caller its row. One model call runs at a time: under load the queue fills while the
model works, so batches grow with the load and no sentence waits for more than one call ahead
of its own. A text tower encodes a batch of 32 short sentences in a few times the cost of one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from searchengine.errors import SearchEngineError

log = logging.getLogger(__name__)

Encode = Callable[[str, list[str]], np.ndarray]  # (model, n texts) -> (n, d) float32


@dataclass(frozen=True)
class _Request:
    model: str
    text: str
    arrived: float  # time.monotonic()
    answer: Future = field(compare=False)


_STOP = object()


class TextBatcher:
    """Encodes sentences from many threads in batched calls of `encode(model, texts)`.

    `max_batch`: most sentences per model call; `max_wait`: seconds a sentence waits for others
    to join it while the model is idle (0 batches only what queued up meanwhile). Thread-safe;
    the worker thread starts with the first sentence and stops on `close`.
    """

    def __init__(self, encode: Encode, *, max_batch: int = 64, max_wait: float = 0.002):
        if max_batch < 1 or max_wait < 0:
            raise ValueError("max_batch must be >= 1 and max_wait >= 0")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()
        self.calls = 0  # model calls made (statistics)
        self.texts = 0  # sentences answered

    def encode(self, model: str, text: str) -> np.ndarray:
        """The (1, d) float32 unit vector of `text` under `model`, as `encode(model, [text])`
        gives it (batched with other threads' sentences). Raises what `encode` raised."""
        request = _Request(model, text, time.monotonic(), Future())
        self._ensure_worker()
        self._queue.put(request)
        return request.answer.result()

    @property
    def waiting(self) -> int:
        """Sentences handed in and not taken into a model call yet (statistics)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop the worker after the sentences already handed in."""
        with self._start:
            if self._worker is not None:
                self._queue.put(_STOP)
                self._worker.join()
                self._worker = None

    def _ensure_worker(self) -> None:
        if self._worker is not None:
            return
        with self._start:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="text-batcher",
                                                daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = self._gather(first)
            self._answer(batch)
            if stop:
                return

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and the sentences that join it: those queued now, and those arriving until
        `max_wait` after `first` did. Returns (batch, whether a stop came)."""
        batch = [first]
        deadline = first.arrived + self.max_wait
        while len(batch) < self.max_batch:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _answer(self, batch: list[_Request]) -> None:
        """One model call per model in `batch` (each distinct sentence once); every request
        gets its row or the error."""
        by_model: dict[str, list[_Request]] = {}
        for request in batch:
            by_model.setdefault(request.model, []).append(request)
        for model, requests in by_model.items():
            texts = list(dict.fromkeys(request.text for request in requests))
            try:
                rows = self._call(model, texts)
            except Exception as error:  # handed to the waiting callers, who raise it
                if len(texts) > 1 and isinstance(error, SearchEngineError):
                    # one sentence the model refuses must not fail the others: each on its own
                    for request in requests:
                        self._answer_one(request)
                else:
                    for request in requests:
                        request.answer.set_exception(error)
                continue
            for request in requests:
                request.answer.set_result(rows[request.text])

    def _answer_one(self, request: _Request) -> None:
        try:
            rows = self._call(request.model, [request.text])
        except Exception as error:  # handed to the waiting caller, who raises it
            request.answer.set_exception(error)
            return
        request.answer.set_result(rows[request.text])

    def _call(self, model: str, texts: list[str]) -> dict[str, np.ndarray]:
        vectors = self._encode(model, texts)  # (n, d)
        self.calls += 1
        self.texts += len(texts)
        return {text: vectors[i : i + 1].copy() for i, text in enumerate(texts)}
