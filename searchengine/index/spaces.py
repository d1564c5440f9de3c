"""Vector spaces: one FAISS index per (model, modality), kept in agreement with the catalog.

The catalog is the source of truth. Reading a space loads its index file, checks the manifest
and re-syncs the ids with the catalog in memory (the state after a crash between a catalog
commit and an index save); anything unusable is rebuilt from the durable vectors, with a warning
that says why. Files change only through a writer's explicit `maintain`, `save` or `repair`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searchengine.catalog import INDEX_REVISION, Catalog
from searchengine.catalog.records import ModelRow
from searchengine.catalog.vectors import BATCH_SIZE
from searchengine.errors import IndexMismatchError
from searchengine.index.kinds import (
    IVF_KINDS,
    IndexPlan,
    IndexSettings,
    auto_candidates,
    format_size,
    outgrown,
    plan_index,
)
from searchengine.index.tuning import QUERIES, RecallTargetError, Tuning, held_out, tune
from searchengine.index.vectors import (
    MANIFEST_VERSION,
    Manifest,
    VectorIndex,
    manifest_path,
    process_alive,
    read_manifest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpaceCheck:
    """The agreement of one index file with the catalog."""

    model: str
    modality: str
    kind: str
    catalog_count: int
    index_count: int
    missing: int  # in the catalog, not in the index
    extra: int  # in the index, not in the catalog
    problem: str | None  # manifest or file problem, if any
    duplicates: int = 0  # ids held more than once by the index
    stale: int = 0  # ids whose vector in the index differs from the catalog's

    @property
    def ok(self) -> bool:
        in_step = self.missing == self.extra == self.duplicates == self.stale == 0
        return self.problem is None and in_step

    @property
    def summary(self) -> str:
        """"ok", or what is out of step and the command that repairs it."""
        if self.ok:
            return "ok"
        if self.problem is not None:
            return f"{self.problem}; run `searchengine check --repair` to rebuild it"
        parts = []
        if self.extra:
            parts.append(f"{self.extra} index entries for vectors the catalog no longer has")
        if self.missing:
            parts.append(f"{self.missing} catalogued vectors missing from the index")
        if self.duplicates:
            parts.append(f"{self.duplicates} ids held twice")
        if self.stale:
            parts.append(f"{self.stale} vectors older than the catalog's (files changed)")
        return (
            f"{', '.join(parts)} (an interrupted command); run `searchengine check --repair`, "
            "or any index, remove, add-texts or use-model, which re-sync first"
        )


class _Outgrown(IndexMismatchError):
    """A routine difference between an index file and the catalog that is answered by building
    the index from the catalog: ids removed from a kind that cannot drop them, or another kind
    asked for. Logged as information, where damage is a warning."""


class _Outdated(_Outgrown):
    """The file was written by an older version of searchengine: usable after a rebuild."""


def index_path(home: Path, spec: str, modality: str) -> Path:
    """home/vectors/<readable slug>-<hash>.<modality>.faiss; the hash keeps long specs distinct."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[-60:].strip("_")
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return home / "vectors" / f"{slug}-{digest}.{modality}.faiss"


class VectorSpace:
    """The index of one (model, modality) in a home, kept in step with the catalog.

    Reading never writes: `index` loads the file and brings it in step with the catalog in
    memory (adds what the catalog gained, drops what it lost, rebuilds from the catalog when
    the file is missing, stale or unusable). Only writers change files, explicitly: `maintain`
    (sync and save if anything differed), `save`, `repair`.
    """

    def __init__(
        self,
        catalog: Catalog,
        home: Path,
        model: ModelRow,
        modality: str,
        kind: str,
        settings: IndexSettings | None = None,
    ):
        self.catalog = catalog
        self.model = model
        self.modality = modality
        self.kind = kind  # as asked: a kind, or auto (the index built says which it chose)
        self.settings = settings or IndexSettings()
        self.path = index_path(home, model.spec, modality)
        self._index: VectorIndex | None = None
        self._stale = False  # the in-memory index is rebuilt from the catalog before next use
        self._unsaved = False  # the in-memory index differs from the file
        self._identity: tuple[int, int, int] | None = None  # the manifest's, when last read
        self._clears_marker = False  # saving ends the marker of a writer that stopped
        # (c, d) float32 sentences encoded by this space's model, or None: what the recall
        # guard of a photo index searches with when the home holds no texts (the engine sets it)
        self.guard_texts: Callable[[], np.ndarray | None] | None = None

    @property
    def index(self) -> VectorIndex:
        """The in-memory index, in step with the catalog; loaded on first use, never saved."""
        if self._index is None:
            self._identity = self._manifest_identity()
            self._index = self._load()
        if self._stale:
            self._index = self._build()
            self._stale = False
        return self._index

    @index.setter
    def index(self, value: VectorIndex) -> None:
        self._index = value
        self._stale = False
        self._unsaved = True

    def _expected(self, kind: str | None = None, *, saving: bool = False) -> Manifest:
        """The identity an index file must have; `kind`: the kind built (auto: the file's).
        `saving`: for a file about to be written (the catalog's id is made if it has none)."""
        if kind is None and self.kind == "auto":
            kind = "flat"
            with contextlib.suppress(IndexMismatchError):
                kind = read_manifest(self.path).kind
        return Manifest(
            model=self.model.spec,
            modality=self.modality,
            kind=kind or self.kind,
            dim=self.model.dim,
            count=0,
            catalog_revision=INDEX_REVISION,
            catalog_id=self.catalog.identity(create=saving),
        )

    def _foreign_catalog(self, manifest: Manifest) -> str | None:
        """Why the file was built from another catalog than this space's (a sentence), or None.
        A file from before index files named their catalog is taken as the home's own only when
        the catalog is the home's SQLite file, which it was then built from."""
        current = self.catalog.identity()
        if manifest.catalog_id == current:
            return None
        if manifest.catalog_id is None and self.catalog.home is not None:
            return None
        return (
            f"it was built from another catalog (id {manifest.catalog_id or 'not recorded'}) "
            f"than {self.catalog.shown_url} (id {current or 'none yet'})"
        )

    def _load(self) -> VectorIndex:
        """The file's index synced with the catalog, or one built from the catalog (in memory)."""
        self._unsaved = True
        if not self.path.exists():
            return self._build()
        if self.interrupted():
            # a writer stopped between committing replaced vectors and saving: the file may hold
            # old vectors under current ids, which no id comparison can see
            log.warning("%s: an index run stopped before its last save; using the catalog's "
                        "vectors", self.path.name)
            self._clears_marker = True
            return self._build()
        try:
            manifest = read_manifest(self.path)
            if not self._accepts(manifest.kind):
                raise _Outgrown(f"the index kind changes from {manifest.kind} to {self.kind}")
            if manifest.version < MANIFEST_VERSION and manifest.kind in IVF_KINDS:
                raise _Outdated("its IVF lists were written in the id-map form of version 1")
            if manifest.catalog_revision != INDEX_REVISION:  # e.g. the vectors' stored form
                raise _Outdated(f"the catalog moved from schema revision "
                                f"{manifest.catalog_revision} to {INDEX_REVISION}")
            foreign = self._foreign_catalog(manifest)
            if foreign is not None:  # the same ids may name other photos there
                raise IndexMismatchError(foreign)
            index = VectorIndex.load(self.path, self._expected(manifest.kind))
            self._unsaved = self._sync(index)
        except _Outdated as change:  # after an upgrade: every reader pays until a writer saves
            log.warning("%s: built in memory from the catalog's vectors (%s); the next "
                        "`searchengine index` saves a current file, until then every command "
                        "builds it again", self.path.name, change)
            return self._build()
        except _Outgrown as change:  # routine (a writer changing the kind saves at once)
            log.info("%s: built from the catalog's vectors (%s)", self.path.name, change)
            return self._build()
        except IndexMismatchError as error:  # a damaged or foreign file
            log.warning("%s: using the catalog's vectors instead (%s)", self.path.name, error)
            return self._build()
        return index

    def _accepts(self, kind: str) -> bool:
        """Whether an index file of `kind` serves this space as asked (auto takes any kind it
        may choose; whether that still fits the collection is `retrain_if_needed`'s call)."""
        return kind != "hnsw" if self.kind == "auto" else kind == self.kind

    def plans(self, count: int) -> list[IndexPlan]:
        """What to build for `count` vectors, best first: the kind asked for, or auto's
        candidates within the memory budget (an error says when none fits)."""
        settings = self.settings
        if self.kind != "auto":
            return [plan_index(self.kind, self.model.dim, count, memory=settings.memory)]
        plans = auto_candidates(
            self.model.dim, count, memory=settings.memory, flat_limit=settings.flat_limit
        )
        return plans or [
            plan_index("auto", self.model.dim, count, memory=settings.memory)  # raises
        ]

    def _batches(self):
        return self.catalog.vector_store.iter_batches(self.modality, self.model.id)

    def _build(self) -> VectorIndex:
        """An index of the catalog's vectors, its search parameters tuned to the target recall
        (auto tries its next candidate when one misses it). Raises RecallTargetError when no
        index within the memory budget reaches the target; nothing stored changes."""
        count, _ = self.catalog.vector_stats(self.modality, self.model.id)
        plans = self.plans(count)
        best: tuple[VectorIndex, Tuning] | None = None
        for plan in plans:
            index = VectorIndex.build_from_batches(
                plan.kind, self.model.dim, count, self._batches, plan=plan
            )
            start = time.perf_counter()
            tuning = self._tune(index)
            index.build_seconds = (index.build_seconds or 0.0) + time.perf_counter() - start
            if tuning.reached:
                return index
            log.info(
                "%s: %s reaches recall@10 %.3f at best, under the target %.2f",
                self.path.name,
                plan.factory,
                tuning.recall,
                tuning.target,
            )
            if best is None or tuning.recall > best[1].recall:
                best = (index, tuning)
        raise RecallTargetError(self._missed_message(*best))  # type: ignore[misc]

    def _tune(self, index: VectorIndex) -> Tuning:
        from searchengine.index.search import space_vectors

        cross, stand_in = self._cross_queries()
        tuning = tune(
            index,
            self._batches,
            target=self.settings.target_recall,
            cross=cross,
            vectors_of=space_vectors(self),
            stand_in=stand_in,
        )
        index.apply_tuning(tuning)
        return tuning

    def _cross_queries(self) -> tuple[np.ndarray | None, bool]:
        """(c, d) float32: up to QUERIES stored vectors of the other modality under this model
        (captions for a photo index, photos for a text index), spread over their ids; the
        queries users actually send across the modality gap. A photo index without stored texts
        takes `guard_texts()` instead, sentences that stand in for them (the bool: True). None
        when there are neither."""
        other = "text" if self.modality == "image" else "image"
        count, _ = self.catalog.vector_stats(other, self.model.id)
        if not count:  # photos alone: everyday sentences stand in for the texts people type
            sentences = self.guard_texts() if self.guard_texts is not None else None
            return sentences, sentences is not None
        _, vectors = held_out(self.catalog.iter_vectors(other, self.model.id), count, QUERIES)
        return vectors, False

    def _missed_message(self, index: VectorIndex, tuning: Tuning) -> str:
        budget = self.settings.memory
        within = f"within {format_size(budget)} " if budget is not None else ""
        return (
            f"no {self.kind} index of {index.count} {self.modality} vectors of {self.model.spec} "
            f"{within}reaches recall@10 {tuning.target:.2f}: the best, {index.plan.factory} with "
            f"{tuning.params}, reaches {tuning.recall:.3f}. Raise --index-memory, lower "
            "--target-recall, or choose --index-kind flat (exact); the stored vectors are kept "
            "and the next `searchengine index` builds the index with the new options"
        )

    def rebuild(self, reason: str | None) -> VectorIndex:
        """A fresh in-memory index from the catalog's vectors (not saved; see `repair`)."""
        if reason:
            log.info("%s: rebuilding from the catalog (%s)", self.path.name, reason)
        return self._build()

    def _sync(self, index: VectorIndex) -> bool:
        """Add vectors the catalog has and the index lacks; drop ids the catalog no longer has."""
        catalog_ids = self.catalog.vector_ids(self.modality, self.model.id)
        index_ids = index.ids()
        if len(np.unique(index_ids)) != len(index_ids):
            raise IndexMismatchError("the index holds some ids twice")
        missing = np.setdiff1d(catalog_ids, index_ids, assume_unique=True)
        extra = np.setdiff1d(index_ids, catalog_ids, assume_unique=True)
        if len(extra):
            if index.needs_rebuild_on_remove:
                raise _Outgrown(f"{len(extra)} vectors were removed from the catalog")
            index.remove(extra)
        for start in range(0, len(missing), BATCH_SIZE):  # a batch at a time, however many
            chunk = missing[start : start + BATCH_SIZE].tolist()
            index.add(*self.catalog.vectors(self.modality, self.model.id, ids=chunk))
        if len(missing) or len(extra):
            log.info(
                "%s: re-synced with the catalog (+%d, -%d)",
                self.path.name,
                len(missing),
                len(extra),
            )
        return bool(len(missing) or len(extra))

    # -- writers --------------------------------------------------------------------------

    def maintain(self) -> bool:
        """Bring the index file in step with the catalog: sync or rebuild, then save if anything
        differed or the file is missing. Returns whether the file was written."""
        self.index  # noqa: B018 -- loads and syncs in memory
        if self._unsaved or not self.path.exists():
            self.save()
            return True
        return False

    def repair(self) -> None:
        """Rebuild the index from the catalog and save it."""
        self.index = self.rebuild(reason="repair")
        self.save()

    def save(self, index: VectorIndex | None = None) -> None:
        """Write the in-memory index (or `index`) and its manifest atomically."""
        if index is None or index is self._index:
            self.index.save(self.path, self._expected(self.index.kind, saving=True))
            self._unsaved = False
        else:
            index.save(self.path, self._expected(index.kind, saving=True))
        self._identity = self._manifest_identity()
        if self._clears_marker:
            self._marker().unlink(missing_ok=True)
            self._clears_marker = False

    def begin_writes(self) -> None:
        """Mark the file as behind the catalog until `end_writes`: a writer killed in between
        leaves the mark, and the next reader or writer rebuilds from the catalog (vectors
        replaced under the same ids are invisible to a comparison of ids)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._marker().write_text(str(os.getpid()))

    def end_writes(self) -> None:
        """Drop the mark of `begin_writes` once everything written is saved."""
        if not self._unsaved and not self._stale:
            self._marker().unlink(missing_ok=True)

    def interrupted(self) -> bool:
        """Did a writer that no longer runs leave this file behind the catalog?"""
        try:
            pid = int(self._marker().read_text() or 0)
        except (FileNotFoundError, ValueError):
            return self._marker().exists()
        return pid != os.getpid() and not process_alive(pid)

    def _marker(self) -> Path:
        return self.path.with_name(self.path.name + ".writing")

    def update(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        removed: np.ndarray | Sequence[int] = (),
    ) -> None:
        """Follow a committed catalog change: (n,) int64 `ids` now hold (n, d) float32 `vectors`
        (new or replaced), `removed` ids are gone. Safe whatever the index held before: no id
        ends up twice, no id keeps an old vector.

        Flat and the IVF kinds drop and add in place. HNSW cannot drop ids (see
        `VectorIndex.needs_rebuild_on_remove`): when the change touches an id it holds, the
        index is rebuilt from the catalog (which already holds the change) before its next use,
        once however many batches come first.
        """
        ids = np.asarray(ids, dtype=np.int64)
        removed = np.asarray(removed, dtype=np.int64)
        if self._stale:
            return  # a rebuild from the catalog is due anyway
        index = self.index
        touched = np.union1d(ids, removed)
        if not len(touched):
            return
        self._unsaved = True
        if index.needs_rebuild_on_remove:
            if len(np.intersect1d(index.ids(), touched)):
                self._stale = True  # the rebuild reads the catalog: it has the new vectors too
                return
        else:
            index.remove(touched)
        if len(ids):
            index.add(ids, vectors)

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, replace: bool = True) -> None:
        """Add (n,) ids with (n, d) vectors the catalog now holds; ids present are replaced."""
        self.update(ids, vectors)

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Drop ids the catalog no longer holds."""
        self.update(np.zeros(0, dtype=np.int64), np.zeros((0, self.model.dim)), removed=ids)

    def retrain_if_needed(self) -> None:
        """After a writer's adds: rebuild an index whose structure no longer fits the collection
        (IVF lists or PQ codes trained on far fewer vectors, or auto's choice changed with the
        size), saying why; else re-tune the search parameters of an approximate index that has
        grown past twice the size they were tuned at."""
        index = self.index
        reason = self.outgrown(index)
        if reason is not None:
            if index.plan.count == 0:  # a new space: routine, its structure needed vectors
                log.info("%s: training the %s index on its first %d vectors", self.path.name,
                         index.plan.kind, index.count)
            else:
                log.warning("%s: rebuilding the index: %s", self.path.name, reason)
            self.index = self._build()
            return
        tuned = index.tuning
        if index.plan.kind != "flat" and (tuned is None or index.count > 2 * tuned.vectors):
            log.info("%s: re-tuning search parameters for %d vectors", self.path.name, index.count)
            tuning = self._tune(index)
            self._unsaved = True
            if not tuning.reached:
                log.warning("%s: rebuilding the index: %s", self.path.name,
                            f"recall@10 fell to {tuning.recall:.3f} as it grew")
                self.index = self._build()

    def outgrown(self, index: VectorIndex) -> str | None:
        """Why `index` no longer fits the collection it holds (a sentence), or None."""
        plans = self.plans(index.count)
        same = [plan for plan in plans if plan.kind == index.plan.kind]
        if not same:
            return outgrown(index.plan, plans[0])
        return outgrown(index.plan, same[0])

    # -- state ----------------------------------------------------------------------------

    def in_step(self) -> bool:
        """Does the file claim what the catalog holds (kind, count, id sum)? Reads the manifest
        and one aggregate query, not the index; a writer re-syncs a space that is not."""
        try:
            manifest = read_manifest(self.path)
            size = self.path.stat().st_size
        except (IndexMismatchError, FileNotFoundError):
            return False
        if self.interrupted() or self._foreign_catalog(manifest) is not None:
            return False
        expected = self._expected()
        if not self._accepts(manifest.kind) or (manifest.catalog_revision, manifest.dim) != (
            expected.catalog_revision,
            expected.dim,
        ):
            return False
        if manifest.id_sum is None or size != manifest.file_size:
            return False
        stats = self.catalog.vector_stats(self.modality, self.model.id)
        return (manifest.count, manifest.id_sum) == stats

    def changed_on_disk(self) -> bool:
        """Has another process saved this index since it was read here? (one stat)"""
        return self._index is not None and self._manifest_identity() != self._identity

    def _manifest_identity(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(manifest_path(self.path))
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def check(self) -> SpaceCheck:
        """Compare the index file on disk (not the in-memory copy) with the catalog."""
        catalog_ids = self.catalog.vector_ids(self.modality, self.model.id)
        problem = None
        index_ids = np.zeros(0, dtype=np.int64)
        try:
            foreign = self._foreign_catalog(read_manifest(self.path))
            if foreign is not None:
                raise IndexMismatchError(f"{self.path.name}: {foreign}")
            on_disk = VectorIndex.load(self.path, self._expected())
            index_ids = on_disk.ids()
        except IndexMismatchError as error:
            problem = str(error)
            on_disk = None
        if problem is None and not self.path.exists():
            problem = "index file missing"
        kind = self.kind
        with contextlib.suppress(IndexMismatchError):
            kind = read_manifest(self.path).kind
        return SpaceCheck(
            model=self.model.spec,
            modality=self.modality,
            kind=kind,
            catalog_count=len(catalog_ids),
            index_count=len(index_ids),
            missing=len(np.setdiff1d(catalog_ids, index_ids)),
            extra=len(np.setdiff1d(index_ids, catalog_ids)),
            duplicates=len(index_ids) - len(np.unique(index_ids)),
            stale=self._stale_vectors(on_disk) if on_disk is not None else 0,
            problem=problem,
        )

    def _stale_vectors(self, on_disk: VectorIndex) -> int:
        """How many ids the file holds with another vector than the catalog's (streamed; the
        vectors are copies of the same stored bytes, so they compare exactly; compressed codes
        are compared with the catalog vector's own code, decoded, within float noise)."""
        held = set(on_disk.ids().tolist())
        stale = 0
        for ids, vectors in self.catalog.vector_store.iter_batches(self.modality, self.model.id):
            present = np.fromiter((i in held for i in ids.tolist()), dtype=bool, count=len(ids))
            if present.any():
                stored = on_disk.reconstruct_batch(ids[present])  # (m, d) float32
                expected = on_disk.stored_form(vectors[present])
                if on_disk.stores_exact_vectors:
                    stale += int(np.any(stored != expected, axis=1).sum())
                else:  # a changed photo moves its vector far more than 1e-3
                    stale += int((np.abs(stored - expected).max(axis=1) > 1e-3).sum())
        return stale
