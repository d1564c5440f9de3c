"""Mined hard negatives: batches of pairs that are near each other under the current model.

With random batches most negatives are easy (a red circle against a green dog). `MinedBatches`
composes each batch of groups instead: a random anchor pair and its nearest not-yet-seen pairs,
by the cosine of their captions' embeddings under the model being trained, found with the
project's own vector index (a flat `VectorIndex`) and refreshed every `refresh_every` steps.
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


class MinedBatches:
    """Batch sampler: the index lists of steps `start` .. `total - 1`, each made of groups of
    `group` pairs (an anchor in a random order of the epoch, then its nearest unseen pairs of
    other images; a random anchor again when the neighbours run out).

    `embed()` returns (n, d) float32 unit vectors, one per pair, under the current model; it is
    called at the first batch and then every `refresh_every` steps. Batches are produced ahead
    of the step that trains on them (the loader prefetches a few), so a refresh at step s uses
    the model of a step or two before. A resumed run starts its epoch with the pairs its order
    put before the resume point counted as seen.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, total: int,
                 group: int, refresh_every: int, embed: Callable[[], np.ndarray],
                 image_ids: Sequence[int]):
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
        index = VectorIndex.build("flat", vectors.shape[1], np.arange(self.n), vectors)
        k = min(self.n, CANDIDATES_PER_MEMBER * self.group + 1)
        _, neighbours = index.search(vectors, k)
        self.refreshes += 1
        log.info("mined batches: %d captions embedded and searched in %.1f s", self.n,
                 time.perf_counter() - started)
        return neighbours

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order, seen, cursor = -1, np.empty(0, np.int64), np.zeros(0, bool), 0
        neighbours = np.empty((0, 0), np.int64)
        for step in range(self.start, self.total):
            step_epoch, position = divmod(step, self.per_epoch)
            if step_epoch != epoch:
                epoch, seen = step_epoch, np.zeros(self.n, dtype=bool)
                order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                cursor = position * self.batch_size if step == self.start else 0
                seen[order[:cursor]] = True  # a resume: those were drawn before it
            if step == self.start or (step - self.start) % self.refresh_every == 0:
                neighbours = self.neighbours()
            batch, cursor = self._batch(order, seen, cursor, neighbours)
            yield batch

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
