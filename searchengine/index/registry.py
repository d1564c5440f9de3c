"""The vector spaces of one home: one per (model, modality), opened on demand and cached.

Getting a space never writes. Writers record a space's index kind when they create it
(`open(..., record=True)`), re-sync every index file a crash left out of step before their first
change (`resync`), and `check(repair=True)` rebuilds what disagrees with the catalog.
"""

from __future__ import annotations

import logging
from pathlib import Path

from searchengine.catalog import Catalog
from searchengine.catalog.records import ModelRow
from searchengine.index.spaces import SpaceCheck, VectorSpace
from searchengine.index.vectors import remove_stale_temps

log = logging.getLogger(__name__)
MODALITIES = ("image", "text")


def kind_key(spec_id: str, modality: str) -> str:
    """The settings key under which a space's index kind is recorded."""
    return f"index_kind:{modality}:{spec_id}"


class HomeSpaces:
    """The spaces of a home's catalog, cached by (model key, modality)."""

    def __init__(self, catalog: Catalog, home: Path):
        self.catalog = catalog
        self.home = home
        self._open: dict[tuple[str, str], VectorSpace] = {}

    def stored_kind(self, spec_id: str, modality: str) -> str:
        return self.catalog.get_setting(kind_key(spec_id, modality)) or "flat"

    def recorded(self, spec_id: str, modality: str) -> bool:
        """Whether a writer created this space (its kind is recorded)."""
        return self.catalog.get_setting(kind_key(spec_id, modality)) is not None

    def recorded_spaces(self) -> list[tuple[ModelRow, str]]:
        """(model row, modality) of every space a writer created, in model order."""
        return [
            (row, modality)
            for row in self.catalog.models()
            for modality in MODALITIES
            if self.recorded(row.spec, modality)
        ]

    def cached(self, spec_id: str, modality: str, kind: str | None) -> VectorSpace | None:
        """The open space, unless its kind differs from `kind` or another process saved its
        file since (`index`, `remove`, `use-model` while `serve` runs): one stat per call."""
        space = self._open.get((spec_id, modality))
        if space is None or (kind is not None and space.kind != kind):
            return None
        if space.changed_on_disk():
            log.info("%s changed on disk; reading it again", space.path.name)
            return None
        return space

    def open(self, row: ModelRow, modality: str, kind: str, *, record: bool) -> VectorSpace:
        """Open the space of `row` x `modality` as `kind`; `record` (writers only) stores the
        kind in the catalog when it differs."""
        if record and self.catalog.get_setting(kind_key(row.spec, modality)) != kind:
            self.catalog.set_setting(kind_key(row.spec, modality), kind)
        space = VectorSpace(self.catalog, self.home, row, modality, kind)
        self._open[(row.spec, modality)] = space
        return space

    def of_row(self, row: ModelRow, modality: str) -> VectorSpace:
        """The open space of a model row (by the row itself: its spec may name a checkpoint that
        changed since), opened from its file when not open yet."""
        space = self._open.get((row.spec, modality))
        if space is None:
            space = self._open[(row.spec, modality)] = self._fresh(row, modality)
        return space

    def clear(self) -> None:
        """Forget the open spaces (another process may have written since)."""
        self._open.clear()

    def _fresh(self, row: ModelRow, modality: str) -> VectorSpace:
        """A space read from its file, not a cached copy the catalog may have moved past."""
        return VectorSpace(
            self.catalog, self.home, row, modality, self.stored_kind(row.spec, modality)
        )

    def resync(self) -> None:
        """A writer's first step: bring back in step every index file whose manifest disagrees
        with the catalog (count, id sum, kind), as a crash between a catalog commit and an index
        save leaves it, and remove temporary files crashed saves left. Reads each manifest and
        one aggregate query per space; loads only the indexes out of step."""
        remove_stale_temps(self.home / "vectors")
        for row, modality in self.recorded_spaces():
            space = self._fresh(row, modality)
            if not space.in_step():
                log.info("%s is out of step with the catalog; re-syncing", space.path.name)
                space.save()  # synced (or rebuilt) in memory first
                self._open[(row.spec, modality)] = space

    def check(self, *, repair: bool = False, progress: bool = False) -> list[SpaceCheck]:
        """Compare every index file with the catalog; with `repair`, rebuild those that
        disagree and remove the temporary files crashed saves left. With `progress`, a bar on
        stderr counts the catalog's vectors of the spaces checked."""
        from searchengine.progress import progress_bar

        if repair:
            remove_stale_temps(self.home / "vectors")
        spaces = self.recorded_spaces()
        counts = [self.catalog.count_vectors(modality, row.id) for row, modality in spaces]
        bar = progress_bar(sum(counts), desc="check", unit="vector", enabled=progress)
        checks = []
        for (row, modality), count in zip(spaces, counts, strict=True):
            space = self._fresh(row, modality)
            result = space.check()
            if repair and not result.ok:
                space.repair()
                self._open.pop((row.spec, modality), None)
                result = space.check()
            checks.append(result)
            bar.update(count)
        bar.close()
        return checks
