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
from searchengine.errors import ModelError
from searchengine.index.kinds import IndexSettings
from searchengine.index.spaces import SpaceCheck, VectorSpace
from searchengine.index.vectors import remove_stale_temps
from searchengine.models import DIGEST_SUFFIX, ModelSpec, parse_model_spec

log = logging.getLogger(__name__)
MODALITIES = ("image", "text")


def kind_key(spec_id: str, modality: str) -> str:
    """The settings key under which a space's index kind is recorded."""
    return f"index_kind:{modality}:{spec_id}"


def settings_key(spec_id: str, modality: str) -> str:
    """The settings key under which a space's `IndexSettings` (target recall, memory budget)
    are recorded, as JSON."""
    return f"index_settings:{modality}:{spec_id}"


def setting_keys(spec_id: str) -> list[str]:
    """The settings a model's spaces record (kinds and index settings of both modalities)."""
    return [key(spec_id, modality) for modality in MODALITIES for key in (kind_key, settings_key)]


class HomeSpaces:
    """The spaces of a home's catalog, cached by (model key, modality)."""

    def __init__(self, catalog: Catalog, home: Path):
        self.catalog = catalog
        self.home = home
        self._open: dict[tuple[str, str], VectorSpace] = {}
        self._told_changed: set[str] = set()

    def key_of(self, spec: ModelSpec, *, tell: bool = True) -> str:
        """The catalog key of a parsed `--model`: a checkpoint is its content. The readable
        `ARCH/path` names the first content this home indexed from that path; other weights
        later written there are `ARCH/path#<digest>`, a space of their own (with `tell`, the user
        is warned once), so two sets of weights never share one."""
        if spec.digest is None:
            return spec.id
        row = self.catalog.find_model(spec.id)
        if row is None or row.content_hash in (None, spec.digest):
            return spec.id
        if tell and spec.key not in self._told_changed:
            self._told_changed.add(spec.key)
            log.warning(
                "checkpoint %s changed since this home indexed it as %s: its present weights are "
                "the model %s, a space of their own; the vectors of the earlier weights stay "
                "under %s",
                spec.checkpoint,
                spec.id,
                spec.key,
                spec.id,
            )
        return spec.key

    def changed_checkpoints(self) -> list[str]:
        """A line for each model whose checkpoint file no longer holds the weights that made its
        vectors (the file was retrained or replaced since, or is gone)."""
        lines = []
        for row in self.catalog.models():
            if row.content_hash is None:
                continue
            display = DIGEST_SUFFIX.sub("", row.spec)
            try:
                spec = parse_model_spec(display)
            except ModelError as error:
                lines.append(f"model {row.spec}: its checkpoint cannot be read ({error})")
                continue
            if spec.digest != row.content_hash:
                lines.append(
                    f"model {row.spec}: its vectors were made by earlier weights of "
                    f"{spec.checkpoint}, which has changed since; --model {display} now means "
                    f"{self.key_of(spec, tell=False)}"
                )
        return lines

    def stored_kind(self, spec_id: str, modality: str) -> str:
        return self.catalog.get_setting(kind_key(spec_id, modality)) or "flat"

    def stored_settings(self, spec_id: str, modality: str) -> IndexSettings:
        return IndexSettings.from_json(self.catalog.get_setting(settings_key(spec_id, modality)))

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

    def cached(
        self,
        spec_id: str,
        modality: str,
        kind: str | None,
        settings: IndexSettings | None = None,
    ) -> VectorSpace | None:
        """The open space, unless its kind differs from `kind`, its settings from `settings`,
        or another process saved its file since (`index`, `remove`, `use-model` while `serve`
        runs): one stat per call."""
        space = self._open.get((spec_id, modality))
        if space is None or (kind is not None and space.kind != kind):
            return None
        if settings is not None and space.settings != settings:
            return None
        if space.changed_on_disk():
            log.info("%s changed on disk; reading it again", space.path.name)
            return None
        return space

    def open(
        self,
        row: ModelRow,
        modality: str,
        kind: str,
        *,
        record: bool,
        settings: IndexSettings | None = None,
    ) -> VectorSpace:
        """Open the space of `row` x `modality` as `kind` with `settings` (else the recorded
        ones); `record` (writers only) stores the kind and settings in the catalog when they
        differ."""
        settings = settings or self.stored_settings(row.spec, modality)
        if record and self.catalog.get_setting(kind_key(row.spec, modality)) != kind:
            self.catalog.set_setting(kind_key(row.spec, modality), kind)
        if record and self.stored_settings(row.spec, modality) != settings:
            self.catalog.set_setting(settings_key(row.spec, modality), settings.as_json())
        space = VectorSpace(self.catalog, self.home, row, modality, kind, settings)
        self._open[(row.spec, modality)] = space
        return space

    def of_row(self, row: ModelRow, modality: str) -> VectorSpace:
        """The open space of a model row (by the row itself: its spec may name a checkpoint that
        changed since), opened from its file when not open yet."""
        space = self._open.get((row.spec, modality))
        if space is None:
            space = self._open[(row.spec, modality)] = self._fresh(row, modality)
        return space

    def forget(self, row: ModelRow) -> list[Path]:
        """Delete the index files (with manifests and writer marks) of every space of `row` and
        drop them from the cache; the catalog is the caller's (`Catalog.remove_model`, with
        `setting_keys`). Returns the files deleted."""
        from searchengine.index.spaces import index_path
        from searchengine.index.vectors import manifest_path

        deleted = []
        for modality in MODALITIES:
            self._open.pop((row.spec, modality), None)
            path = index_path(self.home, row.spec, modality)
            for file in (path, manifest_path(path), path.with_name(path.name + ".writing")):
                if file.is_file():
                    file.unlink()
                    deleted.append(file)
        return deleted

    def clear(self) -> None:
        """Forget the open spaces (another process may have written since)."""
        self._open.clear()

    def _fresh(self, row: ModelRow, modality: str) -> VectorSpace:
        """A space read from its file, not a cached copy the catalog may have moved past."""
        return VectorSpace(
            self.catalog,
            self.home,
            row,
            modality,
            self.stored_kind(row.spec, modality),
            self.stored_settings(row.spec, modality),
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

    def check(
        self, *, repair: bool = False, progress: bool = False
    ) -> tuple[list[SpaceCheck], list[str]]:
        """Compare every index file with the catalog; with `repair`, rebuild those that
        disagree and remove the temporary files crashed saves left. Returns the checks (after
        any repair) and the files rebuilt. With `progress`, a bar on stderr counts the
        catalog's vectors of the spaces checked."""
        from searchengine.progress import progress_bar

        if repair:
            remove_stale_temps(self.home / "vectors")
        spaces = self.recorded_spaces()
        counts = [self.catalog.count_vectors(modality, row.id) for row, modality in spaces]
        bar = progress_bar(sum(counts), desc="check", unit="vector", enabled=progress)
        checks, rebuilt = [], []
        for (row, modality), count in zip(spaces, counts, strict=True):
            space = self._fresh(row, modality)
            result = space.check()
            if repair and not result.ok:
                space.repair()
                rebuilt.append(space.path.name)
                self._open.pop((row.spec, modality), None)
                result = space.check()
            checks.append(result)
            bar.update(count)
        bar.close()
        return checks, rebuilt
