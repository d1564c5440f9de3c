"""Vector spaces: one FAISS index per (model, modality), kept in agreement with the catalog.

The catalog is the source of truth. Opening a space loads its index file, checks the manifest
and re-syncs the ids with the catalog (the state after a crash between a catalog commit and an
index save); anything unusable is rebuilt from the durable vectors, with a warning that says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searchengine.catalog import Catalog, head_revision
from searchengine.catalog.store import ModelRow
from searchengine.errors import IndexMismatchError
from searchengine.vectors import Manifest, VectorIndex, read_manifest

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

    @property
    def ok(self) -> bool:
        return self.problem is None and self.missing == self.extra == self.duplicates == 0


def index_path(home: Path, spec: str, modality: str) -> Path:
    """home/vectors/<readable slug>-<hash>.<modality>.faiss; the hash keeps long specs distinct."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[-60:].strip("_")
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return home / "vectors" / f"{slug}-{digest}.{modality}.faiss"


class VectorSpace:
    """The index of one (model, modality) in a home, loaded and synced with the catalog."""

    def __init__(self, catalog: Catalog, home: Path, model: ModelRow, modality: str, kind: str):
        self.catalog = catalog
        self.model = model
        self.modality = modality
        self.kind = kind
        self.path = index_path(home, model.spec, modality)
        self._index: VectorIndex | None = None

    @property
    def index(self) -> VectorIndex:
        """The synced in-memory index, opened (and repaired if need be) on first use."""
        if self._index is None:
            self._index = self._open()
        return self._index

    @index.setter
    def index(self, value: VectorIndex) -> None:
        self._index = value

    def _expected(self) -> Manifest:
        return Manifest(
            model=self.model.spec,
            modality=self.modality,
            kind=self.kind,
            dim=self.model.dim,
            count=0,
            catalog_revision=head_revision(),
        )

    def _open(self) -> VectorIndex:
        if not self.path.exists():
            return self.rebuild(reason=None)
        try:
            index = VectorIndex.load(self.path, self._expected())
            if self._sync(index):
                self.save(index)
        except IndexMismatchError as error:
            log.warning("rebuilding %s from the catalog: %s", self.path.name, error)
            return self.rebuild(reason=str(error))
        return index

    def rebuild(self, reason: str | None) -> VectorIndex:
        """A fresh index from the catalog's vectors (saved when anything is in it)."""
        ids, vectors = self.catalog.vectors(self.modality, self.model.id)
        index = VectorIndex.build(self.kind, self.model.dim, ids if len(ids) else None, vectors)
        if len(ids) or reason is not None:
            self.save(index)
        return index

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
                raise IndexMismatchError(f"{len(extra)} vectors were removed from the catalog")
            index.remove(extra)
        if len(missing):
            ids, vectors = self.catalog.vectors(self.modality, self.model.id, ids=missing.tolist())
            index.add(ids, vectors)
        if len(missing) or len(extra):
            log.info(
                "%s: re-synced with the catalog (+%d, -%d)",
                self.path.name,
                len(missing),
                len(extra),
            )
        return bool(len(missing) or len(extra))

    def save(self, index: VectorIndex | None = None) -> None:
        (index or self.index).save(self.path, self._expected())

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, replace: bool = False) -> None:
        """Add (n,) ids with (n, d) vectors; `replace` first drops ids that may be present."""
        if replace and len(ids):
            self.remove(ids)
        self.index.add(ids, vectors)

    def remove(self, ids: np.ndarray | list[int]) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if self.index.needs_rebuild_on_remove:
            present = np.intersect1d(self.index.ids(), ids)
            if len(present):
                self.index = self.rebuild(reason="vectors removed")
            return
        self.index.remove(ids)

    def retrain_if_needed(self) -> None:
        """Rebuild an IVF index whose lists were trained on far fewer vectors than it now holds."""
        if self.index.wants_retraining:
            log.info("%s: retraining IVF lists on %d vectors", self.path.name, self.index.count)
            self.index = self.rebuild(reason="retrain")

    def check(self) -> SpaceCheck:
        """Compare the index file on disk (not the in-memory copy) with the catalog."""
        catalog_ids = self.catalog.vector_ids(self.modality, self.model.id)
        problem = None
        index_ids = np.zeros(0, dtype=np.int64)
        try:
            on_disk = VectorIndex.load(self.path, self._expected())
            index_ids = on_disk.ids()
        except IndexMismatchError as error:
            problem = str(error)
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
            problem=problem,
        )
