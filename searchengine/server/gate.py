"""One model call at a time, the text batcher's first: a gate in front of the encoder.

Two torch calls at once on a small CPU only share its cores (each spreads over all of them, and
their thread pools spin against each other), so the server lets one model call run at a time.
Urgent calls (the text batcher's batches of search sentences) go before slow ones (`classify`'s
label sentences, uploaded images) that wait at the same time, and slow work enters in chunks:
a search waits for at most one chunk of slow work, never for the whole of it.

The engine's own encoder calls are the slow ones: `gate_encoder` routes the encoder's
`encode_texts` and `encode_images` through the gate, so `Engine.classify`, `Engine.similar` of an
image and the rest take their turns without knowing of it; the batcher calls `ungated_texts`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class ModelGate:
    """A lock where a waiting urgent holder goes before waiting slow ones, except right after
    an urgent turn that slow work waited through: then one slow turn goes first. So a search
    batch waits for one slow chunk at most, and a steady stream of searches cannot starve the
    slow work (it gets every other turn while both wait)."""

    def __init__(self):
        self._state = threading.Condition()
        self._busy = False
        self._urgent_waiting = 0
        self._slow_waiting = 0
        self._slow_owed = False  # an urgent turn ended while slow work waited

    @property
    def waiting(self) -> int:
        """Calls waiting for their turn now (statistics)."""
        return self._urgent_waiting + self._slow_waiting

    @property
    def busy(self) -> bool:
        """Whether a call holds the gate now."""
        return self._busy

    @contextlib.contextmanager
    def turn(self, *, urgent: bool) -> Iterator[None]:
        """Hold the gate for one model call."""
        with self._state:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._busy or self._slow_owed:
                        self._state.wait()
                finally:
                    self._urgent_waiting -= 1
            else:
                self._slow_waiting += 1
                try:
                    while self._busy or (self._urgent_waiting and not self._slow_owed):
                        self._state.wait()
                finally:
                    self._slow_waiting -= 1
                self._slow_owed = False
            self._busy = True
        try:
            yield
        finally:
            with self._state:
                self._busy = False
                if urgent and self._slow_waiting:
                    self._slow_owed = True
                self._state.notify_all()


class SlowCalls:
    """An encoder method that takes the gate as slow work, `chunk` items per turn.

    items: a list of n sentences, or an (n, 3, H, W) tensor of pixels; returns (n, d) float32
    unit vectors, as the method does (chunks of sentences pad to their own longest: the vectors
    equal the unchunked ones within float noise)."""

    def __init__(self, method: Callable[[Any], np.ndarray], gate: ModelGate, chunk: int):
        self.ungated = method
        self.gate = gate
        self.chunk = chunk

    def __call__(self, items) -> np.ndarray:
        if not len(items):  # the method's own error
            with self.gate.turn(urgent=False):
                return self.ungated(items)
        parts = []
        for start in range(0, len(items), self.chunk):
            with self.gate.turn(urgent=False):
                parts.append(self.ungated(items[start : start + self.chunk]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def gate_encoder(encoder, gate: ModelGate, *, text_chunk: int = 32) -> None:
    """Route `encoder.encode_texts` and `encode_images` through `gate` as slow work (again
    with this gate, for an encoder an earlier server over the same engine gated)."""
    for name, chunk in (("encode_texts", text_chunk), ("encode_images", 1)):
        method = getattr(encoder, name)
        setattr(encoder, name, SlowCalls(getattr(method, "ungated", method), gate, chunk))


def ungate_encoder(encoder, gate: ModelGate) -> None:
    """Undo `gate_encoder` with `gate`: the encoder's own methods again, for an engine (and the
    encoders it keeps) that outlives the server which gated it."""
    for name in ("encode_texts", "encode_images"):
        method = vars(encoder).get(name)
        if not isinstance(method, SlowCalls) or method.gate is not gate:
            continue
        original = method.ungated
        if getattr(original, "__func__", None) is getattr(type(encoder), name, None):
            delattr(encoder, name)  # the class's method, as before the server
        else:
            setattr(encoder, name, original)


def ungated_texts(encoder) -> Callable[[list[str]], np.ndarray]:
    """The encoder's own `encode_texts`, for a caller that holds the gate itself."""
    method = encoder.encode_texts
    return getattr(method, "ungated", method)
