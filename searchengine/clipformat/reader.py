"""`import`: an embedding folder in clip-retrieval's layout into a home, without the model.

The folder is checked first (`layout.read_layout`: files paired, rows aligned, one dimension);
then each shard streams in batches through the same commit as `index` (`ingest.commit.
commit_batch`: one catalog transaction, then the vector space follows), so ids, content hashes,
the index files and their manifests hold as after an `index` run and `check` passes.

Which rows become catalog rows. The catalog describes files on this machine (a search hit is a
file to open; `index` forgets rows whose file is gone), so a row is stored only when its
`image_path` names a file here: absolute, or relative to `base` (the folder clip-retrieval ran
in; default the current folder). Rows naming no local file (webdataset keys, URLs, another
machine's paths) are counted as `missing` and not stored. A file is hashed and its header read
(no pixels decoded), except when the row carries searchengine's own columns and the file's size
and modification time are those exported: then its hash and size are taken from the row. A row
whose `content_hash` differs from the file's present content (the photo changed since its
vector was made) is counted as `changed` and not stored.

Importing twice adds nothing: a file already catalogued, unchanged, with a vector of the model
keeps its vector (`present`), and a content the model has a vector for keeps that vector (as
`index` reuses vectors by content hash). Text rows (`text_emb/` with `caption`) join a text set;
a text that has a vector of the model keeps it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np

from searchengine.catalog import Catalog, as_stored
from searchengine.catalog.records import StoredFile
from searchengine.clipformat.layout import Layout, Shard
from searchengine.errors import ImageDecodeError, InvalidInputError
from searchengine.hashing import content_hash
from searchengine.images import ImageInfo, read_info
from searchengine.ingest.commit import commit_batch
from searchengine.ingest.decode import Decoded
from searchengine.ingest.scan import FileStat
from searchengine.models import ModelSpec
from searchengine.paths import catalog_path

log = logging.getLogger(__name__)
BATCH = 1_000  # rows a catalog transaction
SAVE_EVERY = 50  # batches between index saves (and at the end)
UNIT_TOLERANCE = 0.01  # |norm - 1| allowed: float16 rounding moves a unit norm by ~1e-3
DEFAULT_TEXT_SET = "captions"
_OWN_COLUMNS = ("content_hash", "size", "mtime_ns", "width", "height", "format")
_IMAGE_COLUMNS = ("image_path", "image_path_bytes", *_OWN_COLUMNS, "taken_at", "camera")
_EXAMPLES = 5


@dataclass(frozen=True)
class ImportReport:
    """What `import` did. Images: `images` stored, `present` already in the home with a vector
    of the model (kept), `missing` naming no file here, `changed` whose file differs from the one
    the vector was made from, `unreadable` not an image; `missing_examples` a few paths. Texts:
    `texts` stored in `text_set`, `texts_present` kept."""

    folder: str
    model: str
    images: int
    present: int
    missing: int
    changed: int
    unreadable: int
    texts: int
    texts_present: int
    text_set: str | None
    missing_examples: tuple[str, ...]
    seconds: float


@dataclass
class _Counts:
    images: int = 0
    present: int = 0
    missing: int = 0
    changed: int = 0
    unreadable: int = 0
    texts: int = 0
    texts_present: int = 0
    examples: list[str] = field(default_factory=list)  # a few paths of missing rows


def import_folder(
    catalog: Catalog,
    layout: Layout,
    *,
    image_space=None,
    text_space=None,
    text_set: str | None = None,
    base: Path | None = None,
    progress: bool = False,
) -> ImportReport:
    """Store the checked `layout`'s image rows in `image_space` and its text rows in
    `text_space` (each a writer's `VectorSpace` of the model the vectors came from; None for a
    modality the folder lacks). Raises InvalidInputError for vectors that are not finite unit
    vectors (the batches before stay stored: a later import of the fixed folder completes it)."""
    from searchengine.progress import progress_bar

    start = time.perf_counter()
    counts = _Counts()
    base = Path(os.path.abspath(base if base is not None else Path.cwd()))
    bar = progress_bar(layout.image_rows + layout.text_rows, desc="import", unit="row",
                       enabled=progress)
    try:
        if image_space is not None:
            _writing(image_space, lambda: _import_images(catalog, layout, image_space, base,
                                                         counts, bar))
        if text_space is not None:
            text_set = text_set or layout.sidecar.get("text_set") or DEFAULT_TEXT_SET
            _writing(text_space, lambda: _import_texts(catalog, layout, text_space, text_set,
                                                       counts, bar))
    finally:
        bar.close()
    if counts.missing:
        log.warning("%d rows name no image file on this machine and were not imported (e.g. %s)",
                    counts.missing, ", ".join(counts.examples))
    model = (image_space or text_space).model.spec
    return ImportReport(
        str(layout.folder), model, counts.images, counts.present, counts.missing, counts.changed,
        counts.unreadable, counts.texts, counts.texts_present,
        text_set if text_space is not None else None, tuple(counts.examples),
        time.perf_counter() - start,
    )


def configured_dim(spec: ModelSpec) -> int | None:
    """The embedding width of a hub or random model from its architecture's configuration file
    (neither torch nor weights loaded); None for a checkpoint (its own config decides)."""
    from searchengine.model_imports import architecture_config

    config = architecture_config(spec.arch) if spec.source != "checkpoint" else None
    width = config.get("embed_dim") if config else None
    return width if isinstance(width, int) else None


def check_model(layout: Layout, spec_id: str, dim: int) -> None:
    """Refuse vectors of another width than the model's (InvalidInputError); warn when the
    folder's own note names another model."""
    if layout.dim != dim:
        raise InvalidInputError(
            f"the vectors in {layout.folder} have dimension {layout.dim} but model {spec_id} "
            f"makes {dim}; give the model that made them with --model"
        )
    if layout.sidecar.get("model") not in (None, spec_id):
        log.warning("%s was exported from model %s; importing it as %s", layout.folder,
                    layout.sidecar["model"], spec_id)


def _writing(space, work) -> None:
    """Run `work` on `space` as `index` runs its batches: marked as writing until the last
    save, saved at the end (also on an error), the index re-planned for its new size."""
    space.maintain()
    space.begin_writes()
    try:
        try:
            work()
        finally:
            space.save()
        space.retrain_if_needed()
        space.maintain()
    finally:
        space.end_writes()


def _rows(shard: Shard, columns: tuple[str, ...]):
    """(column -> values, (b, d) float32 stored vectors) of `shard`, BATCH rows at a time."""
    import pyarrow.parquet as pq

    if shard.rows == 0:  # clip-retrieval writes no empty partition; another tool might
        return
    vectors = np.memmap(shard.vectors, dtype=shard.dtype, mode="r", offset=shard.offset,
                        shape=(shard.rows, shard.dim))
    table = pq.ParquetFile(shard.metadata)
    offset = 0
    for batch in table.iter_batches(batch_size=BATCH, columns=[c for c in columns
                                                                if c in shard.columns]):
        block = _checked(np.asarray(vectors[offset : offset + batch.num_rows]), shard, offset)
        offset += batch.num_rows
        yield batch.to_pydict(), block
    del vectors


def _checked(block: np.ndarray, shard: Shard, offset: int) -> np.ndarray:
    """(b, d) float32 in the stored form; InvalidInputError naming the file and row for values
    that are not finite unit vectors."""
    single = block.astype(np.float32)
    norms = np.linalg.norm(single, axis=1) if len(single) else np.zeros(0)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1) > UNIT_TOLERANCE)
    if bad.any():
        row = int(np.argmax(bad))
        raise InvalidInputError(
            f"{shard.vectors.name} row {offset + row} is not a unit vector (norm "
            f"{norms[row]:.4g}); searchengine stores unit-length CLIP vectors, as clip-retrieval "
            "writes them: normalise the vectors, then import again"
        )
    return as_stored(single)


# -- images --------------------------------------------------------------------------------


def _import_images(catalog: Catalog, layout: Layout, space, base: Path, counts, bar) -> None:
    number = 0
    for shard in layout.images:
        for columns, vectors in _rows(shard, _IMAGE_COLUMNS):
            _image_batch(catalog, space, columns, vectors, base, counts)
            bar.update(len(vectors))
            number += 1
            if number % SAVE_EVERY == 0:
                space.save()


def _image_batch(
    catalog: Catalog, space, columns: dict[str, list], vectors: np.ndarray, base: Path, counts
) -> None:
    paths = [_local_path(columns, i, base) for i in range(len(vectors))]
    stats = {p: s for p in dict.fromkeys(p for p in paths if p) if (s := _stat(p))}
    stored = catalog.files_at(list(stats)) if stats else {}
    with_vector = _with_vector(catalog, space.model.id, stored)
    new: dict[str, tuple[Decoded, np.ndarray]] = {}  # path -> file to store, its vector
    extra_ids, extra_vectors = [], []  # catalogued unchanged files without a vector
    seen: set[str] = set()
    for i, path in enumerate(paths):
        stat = stats.get(path) if path else None
        if path is None or stat is None:
            counts.missing += 1
            if len(counts.examples) < _EXAMPLES:
                counts.examples.append(str(path or _value(columns, "image_path", i)))
            continue
        if path in seen:
            continue  # the same path twice: the first row wins (one upsert touches a row once)
        seen.add(path)
        exported = _value(columns, "content_hash", i)
        old = stored.get(path)
        if old is not None and (old.size, old.mtime_ns) == (stat.size, stat.mtime_ns):
            if exported is not None and exported != old.content_hash:
                counts.changed += 1
            elif old.id in with_vector:
                counts.present += 1
            else:
                extra_ids.append(old.id)
                extra_vectors.append(vectors[i])
            continue
        decoded = _describe(stat, columns, i)
        if decoded.error is not None:
            counts.unreadable += 1
        elif exported is not None and exported != decoded.content_hash:
            counts.changed += 1
        else:
            new[path] = (decoded, vectors[i])
    if extra_ids:
        ids = np.asarray(extra_ids, dtype=np.int64)
        matrix = np.vstack(extra_vectors)  # (m, d) float32, stored form
        catalog.add_image_vectors(space.model.id, extra_ids, matrix)
        space.update(ids, matrix)
        counts.images += len(extra_ids)
    if new:
        batch = [decoded for decoded, _ in new.values()]
        by_hash = {cast(str, d.content_hash): vector for d, vector in new.values()}
        by_hash.update(catalog.vectors_by_hash(space.model.id, list(by_hash)))  # stored wins
        commit_batch(catalog, space, batch, by_hash, embedded=0)
        counts.images += len(batch)


def _local_path(columns: dict[str, list], i: int, base: Path) -> str | None:
    """The catalog path of row i's image (`image_path_bytes` first: the exact bytes of a name
    that is not UTF-8), or None for a URL or an empty value."""
    raw = _value(columns, "image_path_bytes", i)
    if raw:
        try:
            return catalog_path(base / os.fsdecode(base64.b64decode(raw, validate=True)))
        except (binascii.Error, ValueError):
            return None
    name = _value(columns, "image_path", i)
    if not isinstance(name, str) or not name or "://" in name:
        return None
    return catalog_path(base / os.path.expanduser(name))  # an absolute name replaces `base`


def _stat(path: str) -> FileStat | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return FileStat(path, stat.st_size, stat.st_mtime_ns)


def _value(columns: dict[str, list], name: str, i: int):
    values = columns.get(name)
    return None if values is None else values[i]


def _with_vector(catalog: Catalog, model_id: int, stored: dict[str, StoredFile]) -> set[int]:
    if not stored:
        return set()
    ids, _ = catalog.vectors("image", model_id, ids=[f.id for f in stored.values()])
    return set(ids.tolist())


def _describe(stat: FileStat, columns: dict[str, list], i: int) -> Decoded:
    """The file as the commit stage takes it (no pixels): its hash and metadata from the row
    when the row is searchengine's and the file's size and time are the exported ones, else
    from the file (hashed, header read)."""
    own = [_value(columns, name, i) for name in _OWN_COLUMNS]
    if all(v is not None for v in own) and (own[1], own[2]) == (stat.size, stat.mtime_ns):
        info = ImageInfo(int(own[3]), int(own[4]), str(own[5]),
                         _datetime(_value(columns, "taken_at", i)), _value(columns, "camera", i))
        return Decoded(stat, str(own[0]), info, None, None)
    try:
        data = Path(stat.path).read_bytes()
    except OSError as error:
        return Decoded(stat, None, None, None, f"unreadable: {error.strerror or error}")
    digest = content_hash(data)
    try:
        return Decoded(stat, digest, read_info(data), None, None)
    except ImageDecodeError as error:
        return Decoded(stat, digest, None, None, str(error))


def _datetime(value) -> datetime | None:
    return value if isinstance(value, datetime) else None


# -- texts ---------------------------------------------------------------------------------


def _import_texts(catalog: Catalog, layout: Layout, space, text_set: str, counts, bar) -> None:
    """Two passes: the captions join the set (ids are made), then their vectors are stored."""
    import pyarrow.parquet as pq

    for shard in layout.texts:
        for batch in pq.ParquetFile(shard.metadata).iter_batches(batch_size=BATCH * 10,
                                                                 columns=["caption"]):
            captions = _captions(batch.column(0).to_pylist())
            if captions:
                catalog.add_texts(text_set, [c for c in captions if c])
    ids = catalog.text_ids(text_set)
    have = set(catalog.vector_ids("text", space.model.id).tolist())
    for shard in layout.texts:
        for columns, vectors in _rows(shard, ("caption",)):
            keep_ids, keep = [], []
            for caption, vector in zip(_captions(columns["caption"]), vectors, strict=True):
                text_id = ids.get(caption) if caption else None
                if text_id is None:
                    continue
                if text_id in have:
                    counts.texts_present += 1
                    continue
                have.add(text_id)
                keep_ids.append(text_id)
                keep.append(vector)
            if keep_ids:
                id_array = np.asarray(keep_ids, dtype=np.int64)
                matrix = np.vstack(keep)
                catalog.write_text_vectors(space.model.id, id_array, matrix)
                space.update(id_array, matrix)
                counts.texts += len(keep_ids)
            bar.update(len(vectors))


def _captions(values: list) -> list[str | None]:
    """Captions as `add-texts` keeps them (stripped; None for a blank or missing one)."""
    return [v.strip() or None if isinstance(v, str) else None for v in values]
