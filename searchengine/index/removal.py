"""`remove-model`: a model's vectors, index files and recorded settings deleted from a home.

Photos, texts and the other models stay. The catalog goes first, in one transaction (the model
is gone for every reader at once), then the index files; a crash in between leaves only files
that nothing names. The default model is refused unless forced, and a checkpoint that `tune`
stored in the home goes with its model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from searchengine.catalog import Catalog
from searchengine.catalog.records import ModelRow
from searchengine.errors import InvalidInputError, SearchEngineError
from searchengine.index.registry import HomeSpaces, setting_keys
from searchengine.models import DIGEST_SUFFIX


@dataclass(frozen=True)
class RemovedModel:
    """What `remove-model` deleted: the model, its vectors by modality, the files (index files,
    and a checkpoint `tune` kept in the home), and the home's default model afterwards (None:
    none is set; the next `index` sets it)."""

    model: str
    vectors: dict[str, int]
    files: list[str]
    default_model: str | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def model_row(catalog: Catalog, model: str, model_id_of: Callable[[str], str],
              home: Path) -> ModelRow:
    """The catalog row `model` names: a spec exactly as stored (also one whose checkpoint is
    gone), else a `--model` value resolved by `model_id_of`. An unknown model lists them all."""
    rows = catalog.models()
    found = next((row for row in rows if row.spec == model.strip()), None)
    if found is None:
        with contextlib.suppress(SearchEngineError):  # not a model spec at all: listed below
            spec_id = model_id_of(model)
            found = next((row for row in rows if row.spec == spec_id), None)
    if found is None:
        listed = "\n  ".join(row.spec for row in rows) or "none"
        raise InvalidInputError(f"no model {model!r} in {home}; its models:\n  {listed}")
    return found


def remove_model(catalog: Catalog, spaces: HomeSpaces, row: ModelRow, *, force: bool,
                 default_key: str, tuned: Path) -> RemovedModel:
    """Remove `row`'s vectors, settings and index files (the caller holds the writer lock);
    `tuned`: the home's folder of `tune` checkpoints. The default (the setting `default_key`)
    is refused unless `force`; then the newest other model with a complete image space becomes
    the default, or none."""
    default = catalog.get_setting(default_key)
    others = [other for other in catalog.models() if other.id != row.id]
    successor = _complete_model(catalog, others)
    if default == row.spec and not force:
        hint = (f"make another the default first (`searchengine use-model {successor}`)"
                if successor else "no other model here has embedded every photo")
        raise InvalidInputError(
            f"{row.spec} is the default model of {spaces.home}; {hint}, or pass --force to "
            "remove it anyway"
        )
    vectors = {modality: catalog.count_vectors(modality, row.id) for modality in ("image", "text")}
    catalog.remove_model(row.id, setting_keys(row.spec))
    files = [str(path) for path in spaces.forget(row)]
    files += _tuned_checkpoint(row.spec, others, tuned)
    if default == row.spec:
        if successor is not None:
            catalog.set_setting(default_key, successor)
        else:
            catalog.delete_setting(default_key)
    return RemovedModel(row.spec, vectors, files, catalog.get_setting(default_key))


def _complete_model(catalog: Catalog, rows: list[ModelRow]) -> str | None:
    """The newest of `rows` whose image space holds a vector of every photo, or None."""
    photos = catalog.count_media()
    complete = [r for r in rows if catalog.count_vectors("image", r.id) >= photos > 0]
    return complete[-1].spec if complete else None


def _tuned_checkpoint(spec_id: str, others: list[ModelRow], tuned: Path) -> list[str]:
    """Delete the checkpoint of `spec_id` when `tune` stored it in `tuned` and no other model
    names it; returns it as a list of none or one path."""
    rest = DIGEST_SUFFIX.sub("", spec_id).partition("/")[2]
    path = Path(rest)
    if not rest or not path.is_absolute() or path.parent != tuned.resolve() or not path.is_file():
        return []
    if any(DIGEST_SUFFIX.sub("", other.spec).partition("/")[2] == rest for other in others):
        return []
    path.unlink()
    return [str(path)]
