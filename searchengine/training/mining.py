"""Mined hard negatives: batches of pairs that are near each other under the current model.

With random batches most negatives are easy (a red circle against a green dog). `MinedBatches`
composes each batch of groups instead: a random anchor pair and its nearest not-yet-seen pairs,
by the cosine of their captions' embeddings under the model being trained, found with the
project's own vector index (a flat `VectorIndex`; an IVF one past `EXACT_LIMIT` pairs) and
refreshed every `refresh_every` steps.
Captions are what is mined because they are cheap to embed (no decoding) and near captions
differ in exactly the words the model confuses ("two red circles on the left" / "two red
squares on the left"). Every pair is still drawn once per epoch (drop-last, as `StepBatches`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from searchengine.errors import InvalidInputError
from searchengine.text_tower import encode_text

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CANDIDATES_PER_MEMBER = 4
"""Neighbours searched per slot of a group: room for the ones already seen or of the same image."""
EXACT_LIMIT = 25_000
"""Up to this many pairs the neighbours are exact (a flat index); above it an IVF index finds
them, since a flat search costs n^2: 100,000 captions took minutes a refresh on 2 cores. A group
needs near pairs, not the nearest ones, so the IVF's approximation costs mining little."""


class MinedBatches:
    """Batch sampler: the index lists of steps `start` .. `total - 1`, each made of groups of
    `group` pairs (an anchor in a random order of the epoch, then its nearest unseen pairs of
    other images; a random anchor again when the neighbours run out).

    `embed()` returns (n, d) float32 unit vectors, one per pair, under the current model; it is
    called at the first batch and then at every step that is a multiple of `refresh_every`.
    Batches are produced ahead of the step that trains on them (the loader prefetches a few), so
    a refresh at step s uses the model of a step or two before.

    `state(step)` is what a run's checkpoint at `step` keeps: the batches already produced for
    steps `step` and on (in the loader's prefetch) and the sampler's state after them. Given
    back as `restored`, the sampler yields those batches, then goes on from that state, so a
    resumed run (with the same `--workers`, hence the same prefetch) draws the batches of the
    uninterrupted run. Without it (a checkpoint from before this), the resumed epoch starts with
    the pairs its order put before the resume point counted as seen, and the batches differ.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, total: int,
                 group: int, refresh_every: int, embed: Callable[[], np.ndarray],
                 image_ids: Sequence[int], restored: dict | None = None):
        if n < batch_size:
            raise InvalidInputError(
                f"batch size {batch_size} is larger than the {n} training pairs; lower --batch-size"
            )
        if len(image_ids) != n or group < 1 or refresh_every < 1:
            raise InvalidInputError("need one image id per pair, group >= 1, refresh_every >= 1")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.total, self.group = start, total, group
        self.refresh_every, self.embed = refresh_every, embed
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.per_epoch = n // batch_size
        self.refreshes = 0
        self.restored = restored
        # the state after the last batch produced (what `state` saves)
        self._epoch, self._seen, self._cursor = -1, np.zeros(0, bool), 0
        self._neighbours = np.empty((0, 0), np.int64)
        self._produced: dict[int, list[int]] = {}  # step -> batch, for the steps in flight
        self._next = start

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def neighbours(self) -> np.ndarray:
        """(n, k) int64: each pair's nearest pairs by embedding, nearest first (itself included
        where the index puts it; -1 pads). One `embed()` and one flat index search."""
        from searchengine.index.vectors import VectorIndex

        started = time.perf_counter()
        vectors = np.ascontiguousarray(self.embed(), dtype=np.float32)  # (n, d) unit
        if vectors.shape[0] != self.n:
            raise InvalidInputError(f"embed() gave {vectors.shape[0]} vectors for {self.n} pairs")
        kind = "flat" if self.n <= EXACT_LIMIT else "ivf"
        index = VectorIndex.build(kind, vectors.shape[1], np.arange(self.n), vectors)
        k = min(self.n, CANDIDATES_PER_MEMBER * self.group + 1)
        _, neighbours = index.search(vectors, k)
        self.refreshes += 1
        log.info("mined batches: %d captions embedded and searched (%s index) in %.1f s", self.n,
                 kind, time.perf_counter() - started)
        return neighbours

    def state(self, step: int) -> dict:
        """The sampler's part of a checkpoint at `step` (tensors and lists: it loads with
        `weights_only=True`); see the class docstring."""
        import torch

        return {"step": step, "next": self._next, "epoch": self._epoch, "cursor": self._cursor,
                "pending": [self._produced[s] for s in range(step, self._next)],
                "seen": torch.from_numpy(self._seen.copy()),
                "neighbours": torch.from_numpy(self._neighbours.copy())}

    def __iter__(self) -> Iterator[list[int]]:
        first = self.start
        restored = self.restored
        if restored is not None and restored["step"] == self.start:
            for offset, batch in enumerate(restored["pending"]):
                self._remember(self.start + offset, list(batch))
                yield list(batch)
            first = int(restored["next"])
            self._epoch, self._cursor = int(restored["epoch"]), int(restored["cursor"])
            self._seen = restored["seen"].numpy().copy()
            self._neighbours = restored["neighbours"].numpy().copy()
        order = (np.random.default_rng([self.seed, self._epoch]).permutation(self.n)
                 if self._epoch >= 0 else np.empty(0, np.int64))
        for step in range(first, self.total):
            step_epoch, position = divmod(step, self.per_epoch)
            if step_epoch != self._epoch:
                self._epoch, self._seen = step_epoch, np.zeros(self.n, dtype=bool)
                order = np.random.default_rng([self.seed, step_epoch]).permutation(self.n)
                self._cursor = position * self.batch_size if step == self.start else 0
                self._seen[order[:self._cursor]] = True  # a resume without state: approximate
            if step % self.refresh_every == 0 or not len(self._neighbours):
                self._neighbours = self.neighbours()
            batch, self._cursor = self._batch(order, self._seen, self._cursor, self._neighbours)
            self._remember(step, batch)
            yield batch

    def _remember(self, step: int, batch: list[int]) -> None:
        """Keep `batch` for `state` until it is certainly trained (a loader prefetches a few)."""
        self._produced[step] = batch
        self._next = step + 1
        for old in [s for s in self._produced if s < step - 64]:
            del self._produced[old]

    def _batch(self, order: np.ndarray, seen: np.ndarray, cursor: int,
               neighbours: np.ndarray) -> tuple[list[int], int]:
        """One batch of groups; marks its pairs seen. Returns (pair indices, new cursor)."""
        batch: list[int] = []
        while len(batch) < self.batch_size:
            while seen[order[cursor]]:
                cursor += 1
            anchor = int(order[cursor])
            seen[anchor] = True
            batch.append(anchor)
            wanted = min(self.group - 1, self.batch_size - len(batch))
            for j in neighbours[anchor]:
                if wanted == 0:
                    break
                if j < 0 or seen[j] or self.image_ids[j] == self.image_ids[anchor]:
                    continue
                seen[j] = True
                batch.append(int(j))
                wanted -= 1
        return batch, cursor


def embed_captions(
    model: Any, tokens: torch.Tensor, *, device: str,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    batch_size: int = 512,
) -> np.ndarray:
    """(n, d) float32 unit embeddings of tokenised captions ((n, L) int64, tokenised once per
    run) by the model's text tower, without a graph and in eval mode (each module's train/eval
    flag is restored afterwards)."""
    import torch

    modes = {module: module.training for module in model.modules()}
    model.eval()
    parts = []
    try:
        with torch.no_grad():
            for i in range(0, len(tokens), batch_size):
                with autocast():
                    embedded = encode_text(model, tokens[i:i + batch_size].to(device))
                parts.append(embedded.float().cpu())
    finally:
        for module, training in modes.items():
            module.training = training
    return torch.cat(parts).numpy()
