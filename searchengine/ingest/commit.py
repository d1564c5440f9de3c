"""The embed and commit stages, and `embed_files`, which drives them over the local backend.

`embed_batch` runs the model on the files of a batch whose content has no stored vector yet;
`commit_batch` writes the batch to the catalog in one transaction (the single writer) and then
updates the vector space, so a crash loses at most the batch in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import numpy as np

from searchengine.catalog import Catalog, NewImage, Skip, as_stored
from searchengine.images import ImageInfo
from searchengine.ingest.decode import Decoded, DecodeDataset
from searchengine.ingest.local import decoded_batches
from searchengine.ingest.scan import FileStat
from searchengine.progress import progress_bar
from searchengine.settings import IngestSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestReport:
    """What a run did. `images_per_second` counts files decoded and written per wall second."""

    scanned: int
    unchanged: int
    embedded: int
    reused: int
    skipped: int
    removed: int
    seconds: float
    refreshed: int = 0  # unchanged files whose metadata was read again (no embedding)

    @property
    def images_per_second(self) -> float:
        return (self.embedded + self.reused) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BatchResult:
    embedded: int
    reused: int
    skipped: int


def embed_files(
    catalog: Catalog,
    encoder,
    space,
    files: list[FileStat],
    settings: IngestSettings,
    *,
    progress: bool = True,
) -> BatchResult:
    """Decode, embed and store `files` for the encoder's model, batch by batch.

    Each batch is one catalog transaction followed by an in-memory index update; the index file
    is saved every `settings.save_every` batches and at the end (also on Ctrl-C), so a crash
    loses at most the batch in flight and the next writer re-syncs the index from the catalog.
    A file whose content hash already has a vector of this model reuses it (renames, moves,
    duplicates) instead of running the model.
    """
    dataset = DecodeDataset(
        files, encoder.preprocess, encoder.image_size, settings, crop=encoder.draft_crop
    )
    totals = np.zeros(3, dtype=np.int64)  # embedded, reused, skipped
    bar = progress_bar(len(files), desc="index", unit="img", enabled=progress)
    try:
        for number, batch in enumerate(decoded_batches(dataset, settings), start=1):
            result = _store_batch(catalog, encoder, space, batch)
            totals += (result.embedded, result.reused, result.skipped)
            bar.update(len(batch))
            bar.set_postfix(skipped=int(totals[2]), reused=int(totals[1]), refresh=False)
            if number % settings.save_every == 0:
                space.save()
    finally:
        bar.close()
        space.save()
    return BatchResult(*map(int, totals))


def _store_batch(catalog: Catalog, encoder, space, batch: list[Decoded]) -> BatchResult:
    """One batch through the embed and commit stages: the vectors this model already stores for
    a content hash are reused (renames, moves, duplicates), the rest are embedded."""
    good = [d for d in batch if d.error is None]
    known = catalog.vectors_by_hash(space.model.id, [cast(str, d.content_hash) for d in good])
    vectors = embed_batch(encoder, batch, known)
    return commit_batch(catalog, space, batch, vectors, embedded=len(vectors) - len(known))


def embed_batch(
    encoder, batch: list[Decoded], known: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The embed stage: content hash -> (d,) float32 vector for every decoded file of `batch`,
    from `known` (the stored vectors by hash) or from the model (unit length), once per
    content."""
    import torch

    vectors: dict[str, np.ndarray] = dict(known)
    fresh = {  # duplicates inside the batch embed once
        cast(str, d.content_hash): d
        for d in batch
        if d.error is None and d.content_hash not in vectors
    }
    if fresh:
        pixels = torch.stack([d.pixels for d in fresh.values()])  # (b, 3, H, W)
        embedded = encoder.encode_images(pixels)  # (b, d) float32 unit
        vectors.update(zip(fresh.keys(), embedded, strict=True))
    return vectors


def commit_batch(
    catalog: Catalog,
    space,
    batch: list[Decoded],
    vectors: dict[str, np.ndarray],
    *,
    embedded: int,
) -> BatchResult:
    """The commit stage (the single writer): the batch's files with their vectors (by content
    hash) and its skips in one catalog transaction, then one update of the vector space.
    `embedded` counts the vectors the model made for this batch (the rest were reused)."""
    skips = [Skip(d.stat.path, d.stat.size, d.stat.mtime_ns, d.error) for d in batch if d.error]
    good = [d for d in batch if d.error is None]
    hashes = [cast(str, d.content_hash) for d in good]  # every decoded file has one
    images = [
        NewImage(d.stat.path, d.stat.size, d.stat.mtime_ns, digest, cast(ImageInfo, d.info))
        for d, digest in zip(good, hashes, strict=True)
    ]
    matrix = (  # (n, d) float32 in the stored form, so the index holds what the catalog holds
        as_stored(np.vstack([vectors[digest] for digest in hashes]))
        if good
        else np.zeros((0, space.model.dim), dtype=np.float32)
    )
    written = catalog.write_images(space.model.id, images, matrix, skips)
    # one update for the whole committed change: an approximate index rebuilt from the catalog
    # (which holds this batch already) must not get the batch added a second time
    space.update(np.asarray(written.ids, dtype=np.int64), matrix, removed=written.removed)
    return BatchResult(embedded, len(good) - embedded, len(skips))
