"""`export`: a home's vectors of one model as clip-retrieval's embedding folder (`layout`).

The vectors stream from the catalog a batch at a time (`Catalog.iter_vectors`, ids ascending)
into shards of `shard_size` rows: each `.npy` is written as a header for its final shape and then
the rows, batch by batch, so memory holds one batch whatever the shard size. Everything goes
to a hidden sibling folder `.OUT.partial-XXXX` that is renamed to OUT at the very end: a folder
named OUT is always complete, an interrupted export leaves only the hidden one (removed on an
error; a killed process leaves it to delete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searchengine.catalog import Catalog
from searchengine.catalog.records import ModelRow
from searchengine.clipformat.layout import (
    DTYPES,
    IMAGE_FOLDER,
    IMAGE_PREFIX,
    METADATA_FOLDER,
    METADATA_PREFIX,
    SIDECAR,
    SIDECAR_FORMAT,
    TEXT_FOLDER,
    TEXT_PREFIX,
    npy_header,
    shard_name,
)
from searchengine.errors import InvalidInputError, NotIndexedError
from searchengine.paths import display_path, path_bytes

log = logging.getLogger(__name__)
DEFAULT_SHARD_SIZE = 1_000_000  # clip-retrieval's `write_batch_size` default
READ_BATCH = 10_000  # vectors read from the catalog at a time


@dataclass(frozen=True)
class ExportReport:
    """What `export` wrote: `rows` vectors of `model` (`modality` image, or text of `text_set`)
    in `shards` shards of (<= shard_size, dim) `dtype` under `folder`."""

    folder: str
    model: str
    modality: str
    rows: int
    shards: int
    dim: int
    dtype: str
    text_set: str | None
    seconds: float


def export_folder(
    catalog: Catalog,
    model: ModelRow,
    out: Path,
    *,
    home: Path,
    text_set: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    dtype: str = "float16",
    force: bool = False,
    progress: bool = False,
) -> ExportReport:
    """Write the image vectors of `model` (or, with `text_set`, that set's text vectors) to
    `out` in clip-retrieval's layout. `out` must be new or empty unless `force` (then it is
    replaced once the new folder is complete). Raises InvalidInputError for a bad option or
    OUT, NotIndexedError when there is nothing to export."""
    from searchengine.progress import progress_bar

    start = time.perf_counter()
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if shard_size < 1:
        raise InvalidInputError(f"the shard size must be >= 1 row, got {shard_size}")
    out = Path(os.path.abspath(Path(out).expanduser()))
    _check_out(out, home, force)
    modality = "image" if text_set is None else "text"
    wanted = None if text_set is None else _set_ids(catalog, text_set)
    rows = _count(catalog, model, wanted)
    if rows == 0:
        what = "image vectors" if text_set is None else f"text vectors of set {text_set!r}"
        raise NotIndexedError(f"the home holds no {what} of model {model.spec} to export")
    shards = -(-rows // shard_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    bar = progress_bar(rows, desc="export", unit="vector", enabled=progress)
    try:
        sink = _ShardSink(partial, modality, rows, shard_size, model.dim, np.dtype(dtype))
        for ids, vectors in _batches(catalog, model, wanted):
            sink.write(vectors, _metadata(catalog, modality, ids))
            bar.update(len(ids))
        sink.close()
        (partial / SIDECAR).write_text(json.dumps({
            "format": SIDECAR_FORMAT, "model": model.spec, "dim": model.dim, "dtype": dtype,
            "modality": modality, "rows": rows, "shards": shards, "text_set": text_set,
        }, indent=2) + "\n")
        _publish(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    return ExportReport(str(out), model.spec, modality, rows, shards, model.dim, dtype, text_set,
                        time.perf_counter() - start)


def _check_out(out: Path, home: Path, force: bool) -> None:
    home = Path(os.path.abspath(home))
    if out == home or home.is_relative_to(out) or out.is_relative_to(home):
        raise InvalidInputError(f"{out} would overlap the home {home}; export to another folder")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file; give a folder to export to")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InvalidInputError(
            f"{out} is not empty; give a new folder, or --force to replace it (the old folder "
            "stays until the new one is complete)"
        )


def _set_ids(catalog: Catalog, text_set: str) -> np.ndarray:
    ids = catalog.text_ids(text_set)
    if not ids:
        sets = ", ".join(catalog.text_sets()) or "none yet"
        raise InvalidInputError(f"no text set named {text_set!r}; sets: {sets}")
    return np.fromiter(ids.values(), dtype=np.int64)


def _count(catalog: Catalog, model: ModelRow, wanted: np.ndarray | None) -> int:
    if wanted is None:
        return catalog.count_vectors("image", model.id)
    return int(np.isin(catalog.vector_ids("text", model.id), wanted).sum())


def _batches(
    catalog: Catalog, model: ModelRow, wanted: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """((b,) int64 ids, (b, d) float32 stored vectors), ids ascending, of the images or of the
    texts in `wanted`."""
    modality = "image" if wanted is None else "text"
    for ids, vectors in catalog.iter_vectors(modality, model.id, batch_size=READ_BATCH):
        if wanted is not None:
            keep = np.isin(ids, wanted)
            ids, vectors = ids[keep], vectors[keep]
        if len(ids):
            yield ids, vectors


def _metadata(catalog: Catalog, modality: str, ids: np.ndarray) -> dict[str, list]:
    """Column -> values, row for row with `ids`: clip-retrieval's `image_path` (or `caption`)
    first, then the catalog's own columns."""
    keys = ids.tolist()
    if modality == "text":
        texts = catalog.texts(keys)
        return {"caption": [texts[i].text for i in keys], "id": keys,
                "text_set": [texts[i].text_set for i in keys]}
    media = catalog.media(keys)
    rows = [media[i] for i in keys]
    return {
        "image_path": [display_path(m.path) for m in rows],
        "image_path_bytes": [path_bytes(m.path) for m in rows],  # set where not UTF-8
        "id": keys,
        "content_hash": [m.content_hash for m in rows],
        "size": [m.size for m in rows],
        "mtime_ns": [m.mtime_ns for m in rows],
        "width": [m.width for m in rows],
        "height": [m.height for m in rows],
        "format": [m.format for m in rows],
        "taken_at": [m.taken_at for m in rows],
        "camera": [m.camera for m in rows],
    }


def _schema(modality: str):
    import pyarrow as pa

    if modality == "text":
        return pa.schema([("caption", pa.string()), ("id", pa.int64()), ("text_set", pa.string())])
    return pa.schema([
        ("image_path", pa.string()), ("image_path_bytes", pa.string()), ("id", pa.int64()),
        ("content_hash", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
        ("taken_at", pa.timestamp("us")), ("camera", pa.string()),
    ])


class _ShardSink:
    """Rows in, shards out: `img_emb_N.npy` (or `text_emb_N.npy`) and `metadata_N.parquet`,
    `shard_size` rows each (the last one the rest), named as clip-retrieval names them."""

    def __init__(
        self, folder: Path, modality: str, rows: int, shard_size: int, dim: int, dtype: np.dtype
    ):
        self.modality = modality
        self.vector_folder = folder / (IMAGE_FOLDER if modality == "image" else TEXT_FOLDER)
        self.prefix = IMAGE_PREFIX if modality == "image" else TEXT_PREFIX
        self.metadata_folder = folder / METADATA_FOLDER
        self.vector_folder.mkdir()
        self.metadata_folder.mkdir()
        self.rows, self.shard_size, self.dim, self.dtype = rows, shard_size, dim, dtype
        self.shards = -(-rows // shard_size)
        self.schema = _schema(modality)
        self.number = -1
        self.left = 0  # rows the open shard still takes
        self.written = 0
        self._vectors: Any = None  # the open .npy file (a binary file object)
        self._table: Any = None  # the open pyarrow.parquet.ParquetWriter

    def write(self, vectors: np.ndarray, columns: dict[str, list]) -> None:
        """Append (b, d) float32 rows and their metadata columns (b values each)."""
        import pyarrow as pa

        done = 0
        while done < len(vectors):
            if self.left == 0:
                self._next_shard()
            take = min(self.left, len(vectors) - done)
            part = slice(done, done + take)
            self._vectors.write(np.ascontiguousarray(vectors[part], dtype=self.dtype).tobytes())
            table = pa.table({name: values[part] for name, values in columns.items()},
                             schema=self.schema)
            self._table.write_table(table)
            self.left -= take
            self.written += take
            done += take

    def _next_shard(self) -> None:
        import pyarrow.parquet as pq

        self._close_shard()
        self.number += 1
        rows = min(self.shard_size, self.rows - self.written)
        if rows <= 0:
            raise InvalidInputError("the catalog gained vectors during the export; run it again")
        name = shard_name(self.prefix, self.number, self.shards, ".npy")
        self._vectors = (self.vector_folder / name).open("wb")
        self._vectors.write(npy_header(rows, self.dim, self.dtype))
        table_name = shard_name(METADATA_PREFIX, self.number, self.shards, ".parquet")
        self._table = pq.ParquetWriter(self.metadata_folder / table_name, self.schema)
        self.left = rows

    def _close_shard(self) -> None:
        if self._vectors is not None:
            self._vectors.close()
            self._table.close()
            self._vectors = self._table = None

    def close(self) -> None:
        """Finish the last shard; the rows written must be the rows announced."""
        self._close_shard()
        if self.written != self.rows or self.left:
            raise InvalidInputError(
                f"the catalog changed during the export ({self.written} of {self.rows} vectors "
                "read); run it again"
            )


def _publish(partial: Path, out: Path) -> None:
    """Rename the complete `partial` folder to `out`; an `out` already there (empty, or
    replaced with --force) is moved aside first and removed after."""
    if not out.exists():
        os.rename(partial, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    aside.rmdir()
    os.rename(out, aside)
    os.rename(partial, out)
    shutil.rmtree(aside, ignore_errors=True)
