"""A home's whole collection embedded with one more model: the step before switching to it.

Unlike `index`, nothing is scanned and no file's catalog row changes: every catalogued file
without a vector of the model is read, hashed and decoded by the same decode stage (worker
processes, drafts), content this model embedded already (a duplicate) reuses its vector, and only
the model runs on the rest; the vectors are added to the model's space, batch by batch, as `index`
adds them. A file that is gone, unreadable, or whose content changed since it was indexed keeps
no vector of the new model and is reported: `index` is the command that brings the catalog in
step with the disk, for every model at once, and a switch waits for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

import numpy as np

from searchengine.catalog import Catalog, as_stored
from searchengine.catalog.records import StoredFile
from searchengine.ingest.commit import embed_batch
from searchengine.ingest.decode import Decoded, DecodeDataset
from searchengine.ingest.local import decoded_batches
from searchengine.ingest.scan import FileStat
from searchengine.progress import progress_bar
from searchengine.settings import IngestSettings

log = logging.getLogger(__name__)
CHANGED = "changed since it was indexed"


@dataclass(frozen=True)
class CollectionReport:
    """What embedding the collection with `model` did.

    `files`: catalogued files; `had`: those that had a vector of the model before; `embedded` /
    `reused`: vectors the model made / copied from a file of equal content; `missing`: (path,
    reason) of files left without one. `seconds`: wall time."""

    model: str
    files: int
    had: int
    embedded: int
    reused: int
    missing: tuple[tuple[str, str], ...]
    seconds: float

    @property
    def complete(self) -> bool:
        """Does every catalogued file now have a vector of the model?"""
        return not self.missing

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "files": self.files,
            "had": self.had,
            "embedded": self.embedded,
            "reused": self.reused,
            "missing": [{"path": path, "reason": reason} for path, reason in self.missing],
            "complete": self.complete,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class SwitchReport:
    """`Engine.switch_model`: the collection's re-embedding, whether the default was switched
    (only when it is complete), and the seconds the switch itself took."""

    collection: CollectionReport
    switched: bool
    seconds: float

    def as_dict(self) -> dict:
        return {"collection": self.collection.as_dict(), "switched": self.switched,
                "seconds": self.seconds}


def embed_collection(
    catalog: Catalog, encoder, space, settings: IngestSettings, *, progress: bool = False
) -> CollectionReport:
    """Give every catalogued file a vector of the encoder's model in `space` (its image space,
    maintained by the caller, who holds the writer lock). The index file is saved every
    `settings.save_every` batches and at the end, also on Ctrl-C; the catalog commits every
    batch, so an interrupted run keeps its finished batches and a second run continues."""
    start = time.perf_counter()
    pending = catalog.files_without_vector(space.model.id)
    files = catalog.count_media()
    by_path = {stored.path: stored for stored in pending}
    dataset = DecodeDataset(
        [FileStat(stored.path, stored.size, stored.mtime_ns) for stored in pending],
        encoder.preprocess, encoder.image_size, settings, crop=encoder.draft_crop,
    )
    missing: list[tuple[str, str]] = []
    counts = np.zeros(2, dtype=np.int64)  # embedded, reused
    bar = progress_bar(len(pending), desc="re-embed", unit="img", enabled=progress)
    space.begin_writes()  # until the last save: a kill in between is seen by the next writer
    try:
        for number, batch in enumerate(decoded_batches(dataset, settings), start=1):
            good = _usable(batch, by_path, missing)
            counts += _store(catalog, encoder, space, good, by_path)
            bar.update(len(batch))
            bar.set_postfix(missing=len(missing), refresh=False)
            if number % settings.save_every == 0:
                space.save()
    finally:
        bar.close()
        space.save()
        space.end_writes()
    if missing:
        log.warning("%d of %d files have no vector of %s: %s", len(missing), files,
                    space.model.spec, "; ".join(f"{p}: {r}" for p, r in missing[:3]))
    return CollectionReport(
        model=space.model.spec, files=files, had=files - len(pending),
        embedded=int(counts[0]), reused=int(counts[1]), missing=tuple(missing),
        seconds=time.perf_counter() - start,
    )


def _usable(
    batch: list[Decoded], by_path: dict[str, StoredFile], missing: list[tuple[str, str]]
) -> list[Decoded]:
    """The decoded files of `batch` whose content is the one catalogued; the others go to
    `missing` with their reason."""
    good = []
    for decoded in batch:
        if decoded.error is not None:
            missing.append((decoded.stat.path, decoded.error))
        elif decoded.content_hash != by_path[decoded.stat.path].content_hash:
            missing.append((decoded.stat.path, CHANGED))
        else:
            good.append(decoded)
    return good


def _store(
    catalog: Catalog, encoder, space, good: list[Decoded], by_path: dict[str, StoredFile]
) -> tuple[int, int]:
    """Embed (or reuse by content hash) and store the vectors of `good`: one catalog
    transaction, then one update of the space. Returns (embedded, reused)."""
    if not good:
        return 0, 0
    hashes = [cast(str, decoded.content_hash) for decoded in good]
    known = catalog.vectors_by_hash(space.model.id, hashes)
    vectors = embed_batch(encoder, good, known)
    ids = np.array([by_path[decoded.stat.path].id for decoded in good], dtype=np.int64)
    matrix = as_stored(np.vstack([vectors[digest] for digest in hashes]))  # (n, d) float32
    catalog.add_image_vectors(space.model.id, ids.tolist(), matrix)
    space.update(ids, matrix)
    embedded = len(set(hashes) - set(known))
    return embedded, len(good) - embedded
