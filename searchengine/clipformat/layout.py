"""clip-retrieval's embedding folder: its file names, and the checks a folder passes before import.

clip-retrieval's `inference` (and autofaiss, and `embedding-reader` that both read with) lays
a collection out as

    OUT/img_emb/img_emb_N.npy           (n_N, d) float16, row i = the i-th image of partition N
    OUT/text_emb/text_emb_N.npy         (n_N, d) float16, captions (text runs)
    OUT/metadata/metadata_N.parquet     n_N rows, aligned with both: `image_path`, `caption`, ...

N is the partition number zero-padded to `int(log10(partitions)) + 1` digits (`shard_name`), each
`.npy` is one `np.save` of a 2-D little-endian float array, and the Parquet rows are in the same
order as the `.npy` rows. `read_layout` checks all of that from the headers alone (no vector is
read): every shard has both files, the row counts agree, one dimension, float dtype, files not
truncated, the columns it needs present. A folder that fails is refused before anything is
stored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searchengine.errors import InvalidInputError

IMAGE_FOLDER = "img_emb"
TEXT_FOLDER = "text_emb"
METADATA_FOLDER = "metadata"
IMAGE_PREFIX = "img_emb_"
TEXT_PREFIX = "text_emb_"
METADATA_PREFIX = "metadata_"
SIDECAR = "searchengine.json"  # what searchengine adds: model, dimension, dtype (clip-retrieval
# ignores it; `import` uses it to warn when --model names another model than the export's)
SIDECAR_FORMAT = "searchengine.clip-retrieval/1"
DTYPES = ("float16", "float32")
_NUMBER = re.compile(r"^(\d+)$")


def shard_name(prefix: str, number: int, shards: int, suffix: str) -> str:
    """`img_emb_007.npy`: clip-retrieval's name of partition `number` of `shards` (its
    `OutputSink` pads N to `int(math.log10(output_partition_count)) + 1` digits)."""
    width = int(math.log10(max(shards, 1))) + 1
    return f"{prefix}{str(number).zfill(width)}{suffix}"


def npy_header(rows: int, dim: int, dtype: np.dtype) -> bytes:
    """The bytes `np.save` writes before the data of a C-ordered (rows, dim) array of `dtype`
    (format version 1.0), so a shard can be streamed to disk a batch at a time."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
         "shape": (rows, dim)},
    )
    return buffer.getvalue()


@dataclass(frozen=True)
class Shard:
    """One partition: its vector file (rows, dim of dtype, data from `offset`) and the Parquet
    file with its rows."""

    number: int
    vectors: Path
    metadata: Path
    rows: int
    dim: int
    dtype: np.dtype
    offset: int  # bytes before the first vector (the .npy header)
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """A checked folder: the image shards and text shards it holds (either may be empty), and
    what searchengine's own export recorded beside them (`SIDECAR`; empty for clip-retrieval's).
    """

    folder: Path
    images: tuple[Shard, ...]
    texts: tuple[Shard, ...]
    sidecar: dict

    @property
    def dim(self) -> int:
        return (self.images or self.texts)[0].dim

    @property
    def image_rows(self) -> int:
        return sum(s.rows for s in self.images)

    @property
    def text_rows(self) -> int:
        return sum(s.rows for s in self.texts)


def read_layout(folder: Path) -> Layout:
    """Check `folder` as an embedding folder (see the module doc) and describe it.

    Raises InvalidInputError, naming the file and what to do, for: a path that is not a folder,
    no img_emb/ or text_emb/, no metadata/, a shard with one file of the pair missing, a .npy
    that is not a 2-D float16/float32 array or is cut short, a Parquet file that cannot be read
    or whose row count differs from its .npy, two dimensions, a missing `image_path` or
    `caption` column."""
    if not folder.exists():
        raise InvalidInputError(f"{folder} does not exist; give the folder that holds img_emb/ "
                                "and metadata/")
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder; give the folder that holds img_emb/ "
                                "and metadata/ (the OUT of `searchengine export` or of "
                                "clip-retrieval's `inference`)")
    has_images = (folder / IMAGE_FOLDER).is_dir()
    has_texts = (folder / TEXT_FOLDER).is_dir()
    if not has_images and not has_texts:
        raise InvalidInputError(
            f"{folder} holds neither {IMAGE_FOLDER}/ nor {TEXT_FOLDER}/; give the folder that "
            f"clip-retrieval's `inference` or `searchengine export` wrote"
        )
    metadata = _numbered(folder / METADATA_FOLDER, METADATA_PREFIX, ".parquet", required=True)
    images = _shards(folder, IMAGE_FOLDER, IMAGE_PREFIX, metadata, "image_path") if has_images \
        else ()
    texts = _shards(folder, TEXT_FOLDER, TEXT_PREFIX, metadata, "caption") if has_texts else ()
    if images and texts and [(s.number, s.rows) for s in images] != [
        (s.number, s.rows) for s in texts
    ]:
        raise InvalidInputError(
            f"{folder}: {IMAGE_FOLDER}/ and {TEXT_FOLDER}/ hold different partitions or row "
            "counts, but share one metadata/ folder whose rows must align with both"
        )
    used = {s.number for s in (*images, *texts)}
    orphans = [path.name for number, path in sorted(metadata.items()) if number not in used]
    if orphans:
        raise InvalidInputError(
            f"{folder}: {METADATA_FOLDER}/{orphans[0]} has no vector file of its partition "
            f"({len(orphans)} such); the .npy files and metadata must be copied together"
        )
    dims = {s.dim for s in (*images, *texts)}
    if len(dims) > 1:
        raise InvalidInputError(
            f"{folder}: the shards have different dimensions {sorted(dims)}; one folder holds "
            "the vectors of one model"
        )
    if not images and not texts:
        raise InvalidInputError(f"{folder}: no vectors in {IMAGE_FOLDER}/ or {TEXT_FOLDER}/")
    return Layout(folder, images, texts, _sidecar(folder))


def _numbered(folder: Path, prefix: str, suffix: str, *, required: bool) -> dict[int, Path]:
    """N -> path of every `prefix + N + suffix` file in `folder`."""
    if not folder.is_dir():
        if required:
            raise InvalidInputError(
                f"{folder.parent} has no {folder.name}/ folder: clip-retrieval writes "
                f"{folder.name}/{prefix}N{suffix} beside the vectors, row for row; without it "
                "the vectors name no photo or text. Copy the whole folder"
            )
        return {}
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.name.startswith(prefix) and path.name.endswith(suffix)):
            continue
        match = _NUMBER.match(path.name[len(prefix) : len(path.name) - len(suffix)])
        if match is None:
            continue
        number = int(match.group(1))
        if number in found:
            raise InvalidInputError(f"{found[number].name} and {path.name} are one partition")
        found[number] = path
    return found


def _shards(
    folder: Path, name: str, prefix: str, metadata: dict[int, Path], column: str
) -> tuple[Shard, ...]:
    vectors = _numbered(folder / name, prefix, ".npy", required=False)
    shards = []
    for number, path in sorted(vectors.items()):
        if number not in metadata:
            raise InvalidInputError(
                f"{path.name} has no {METADATA_FOLDER}/{METADATA_PREFIX}{number}.parquet beside "
                "it (the rows that say which photo or text each vector is); copy the folder whole"
            )
        rows, dim, dtype, offset = read_npy_header(path)
        table_rows, columns = _parquet_shape(metadata[number])
        if table_rows != rows:
            raise InvalidInputError(
                f"misaligned shard: {name}/{path.name} holds {rows} vectors but "
                f"{METADATA_FOLDER}/{metadata[number].name} {table_rows} rows; they must align "
                "row for row (was one of them rewritten or cut short?)"
            )
        if column not in columns:
            raise InvalidInputError(
                f"{metadata[number]} has no {column!r} column (columns: {', '.join(columns)}); "
                f"clip-retrieval writes {column!r} for {name}/"
            )
        shards.append(Shard(number, path, metadata[number], rows, dim, dtype, offset, columns))
    if not shards:
        raise InvalidInputError(f"{folder / name} holds no {prefix}N.npy files")
    return tuple(shards)


def read_npy_header(path: Path) -> tuple[int, int, np.dtype, int]:
    """(rows, dim, dtype, data offset) of a .npy file of a 2-D float16/float32 array whose size
    matches its header; InvalidInputError otherwise."""
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
            offset = file.tell()
    except (ValueError, OSError, SyntaxError, EOFError) as error:
        raise InvalidInputError(
            f"{path} is not a readable NumPy .npy file ({error}); export it again"
        ) from error
    if len(shape) != 2 or fortran or dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise InvalidInputError(
            f"{path} holds a {dtype} array of shape {shape}; an embedding shard is a 2-D "
            "(rows, dimension) float16 or float32 array"
        )
    expected = offset + shape[0] * shape[1] * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise InvalidInputError(
            f"{path} is {size} bytes but its header promises {expected} ({shape[0]} x "
            f"{shape[1]} {dtype}); the file was cut short or changed: export it again"
        )
    return int(shape[0]), int(shape[1]), dtype, offset


def _parquet_shape(path: Path) -> tuple[int, tuple[str, ...]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowException, OSError) as error:
        raise InvalidInputError(f"{path} is not a readable Parquet file ({error})") from error
    return meta.num_rows, tuple(meta.schema.names)


def _sidecar(folder: Path) -> dict:
    path = folder / SIDECAR
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise InvalidInputError(f"{path} is not readable JSON ({error}); delete it") from error
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else {}
