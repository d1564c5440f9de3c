"""Vector indexes: FAISS over (n, d) float32 unit vectors whose ids are catalog ids.

One index per (model, modality). An index file is derived data: the catalog holds every vector,
so a missing, stale or corrupt file is rebuilt from it. Files are written atomically (temporary
file, fsync, rename) next to a JSON manifest that is checked when the file is opened.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from searchengine.errors import IndexMismatchError, InvalidInputError

log = logging.getLogger(__name__)

INDEX_KINDS: dict[str, str] = {
    "flat": "exact inner-product search (default; right up to a few million vectors)",
    "hnsw": "approximate graph search (HNSW, M=32): fast on large collections, no training",
    "ivf": "approximate inverted lists (IVF-Flat, sqrt(n) lists, nprobe 16): trained on the data",
}
MANIFEST_VERSION = 1
TRAIN_PER_LIST = 256  # IVF training vectors per list (FAISS warns below 39, gains little past 256)
STALE_TEMP_SECONDS = 3600  # a temporary file without a writer's pid is stale after this long


@dataclass(frozen=True)
class Manifest:
    """What an index file claims to hold; compared with the catalog when opened."""

    model: str
    modality: str
    kind: str
    dim: int
    count: int
    catalog_revision: str
    file_size: int = 0
    version: int = MANIFEST_VERSION
    id_sum: int | None = None  # sum of the ids held; with `count`, compared with the catalog


def check_kind(kind: str) -> str:
    if kind not in INDEX_KINDS:
        choices = "; ".join(f"{k}: {v}" for k, v in INDEX_KINDS.items())
        raise InvalidInputError(f"unknown index kind {kind!r}; choose one of: {choices}")
    return kind


class VectorIndex:
    """A FAISS index mapping catalog ids to unit vectors, searched by inner product."""

    def __init__(self, index, kind: str, dim: int):
        self.index = index  # faiss.IndexIDMap2 around the kind's index (CPU copy)
        self.kind = kind
        self.dim = dim
        self._gpu = None
        self._held: np.ndarray | None = None  # sorted ids, for filters; dropped on change

    @classmethod
    def build(
        cls, kind: str, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None
    ) -> VectorIndex:
        """A new index of `kind`, holding (n,) int64 `ids` -> (n, d) float32 `vectors` if given."""
        if ids is None or not len(ids):
            return cls.empty(kind, dim, 0)
        if vectors is None:
            raise InvalidInputError(f"{len(ids)} ids but no vectors to build an index of")
        index = cls.empty(kind, dim, len(ids))
        index.train(vectors)
        index.add(ids, vectors)
        return index

    @classmethod
    def build_from_batches(
        cls,
        kind: str,
        dim: int,
        count: int,
        batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    ) -> VectorIndex:
        """A new index of `count` vectors read as batches of ((b,) int64 ids, (b, d) float32).

        `batches()` is called once for the vectors (twice for IVF: first for a training sample
        of at most TRAIN_PER_LIST vectors a list, spread evenly over the ids), so no more than a
        batch and the sample are ever in memory besides the index itself.
        """
        index = cls.empty(kind, dim, count)
        if kind == "ivf" and count:
            index.train(_training_sample(batches(), count, index._inner().nlist * TRAIN_PER_LIST))
        for ids, vectors in batches():
            index.add(ids, vectors)
        return index

    @classmethod
    def empty(cls, kind: str, dim: int, expected: int) -> VectorIndex:
        """An empty index of `kind`; an IVF one gets lists for `expected` vectors."""
        import faiss

        check_kind(kind)
        if kind == "flat":
            inner = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 80
            inner.hnsw.efSearch = 64
        else:
            nlist = ivf_lists(expected)
            inner = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            inner.nprobe = min(16, nlist)
        return cls(faiss.IndexIDMap2(inner), kind, dim)

    def train(self, vectors: np.ndarray) -> None:
        """Train an IVF index's lists on (n, d) float32 vectors (other kinds need nothing)."""
        from searchengine.index.devices import gpu_training, visible_gpus

        if self.kind == "ivf" and len(vectors) and not self._inner().is_trained:
            with gpu_training(self._inner(), visible_gpus()):
                self._inner().train(np.ascontiguousarray(vectors, dtype=np.float32))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def wants_retraining(self) -> bool:
        """An IVF index built on few vectors has too few lists once many more arrive."""
        if self.kind != "ivf":
            return False
        return self._inner().nlist * 2 < ivf_lists(self.count)

    @property
    def needs_rebuild_on_remove(self) -> bool:
        """Only the flat kind can drop ids in place; others are rebuilt from the catalog instead.

        HNSW graphs cannot drop points. IVF lists can, but IndexIDMap2 then compacts its id map
        as if the inner index had renumbered its rows (only IndexFlat does), so every later row
        would answer with its neighbour's id.
        """
        return self.kind != "flat"

    def _inner(self):
        import faiss

        return faiss.downcast_index(self.index.index)

    def ids(self) -> np.ndarray:
        """(n,) int64 ids held, in insertion order."""
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def sorted_ids(self) -> np.ndarray:
        """(n,) int64 ids held, ascending (kept until the index changes)."""
        if self._held is None:
            self._held = np.sort(self.ids())
        return self._held

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with their (n, d) float32 unit vectors."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise InvalidInputError(
                f"expected {len(ids)} vectors of dimension {self.dim}, got shape {vectors.shape}"
            )
        self.train(vectors)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = self._held = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (flat kind only); returns how many were present."""
        import faiss

        if self.needs_rebuild_on_remove:
            raise InvalidInputError(
                f"{self.kind} indexes cannot remove vectors; rebuild from the catalog"
            )
        self._gpu = self._held = None
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))

    def reconstruct(self, vector_id: int) -> np.ndarray:
        """(d,) float32 vector stored for `vector_id`."""
        self._direct_map()
        return self.index.reconstruct(int(vector_id))

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """(n, d) float32 vectors stored for (n,) int64 `ids` (all held)."""
        self._direct_map()
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def _direct_map(self) -> None:
        if self.kind == "ivf" and self._inner().direct_map.type == 0:  # NoMap
            self._inner().make_direct_map()  # IVF rows are found through a map built on demand

    def search(
        self,
        xq: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for (m, d) float32 queries.

        Returns D (m, k) float32 scores, descending, and I (m, k) int64 ids; -1 pads rows when
        fewer than k vectors qualify. `allowed_ids` restricts the search without losing hits to
        the approximation (`index.search.filtered_search`: exact over the allowed vectors, or
        the index with a selector and widened parameters); `vectors_of(ids)` reads durable
        vectors for kinds that do not store them whole.
        """
        from searchengine.index.search import filtered_search

        xq = np.ascontiguousarray(np.atleast_2d(xq), dtype=np.float32)
        if xq.shape[1] != self.dim:
            raise InvalidInputError(f"query dimension {xq.shape[1]} != index dimension {self.dim}")
        k = max(1, min(int(k), max(self.count, 1)))
        if allowed_ids is None:
            return self._searcher(k).search(xq, k)
        return filtered_search(self, xq, k, allowed_ids, vectors_of=vectors_of)

    def _searcher(self, k: int):
        """The GPU copy where `devices.search_device` says so (flat and IVF with faiss-gpu and a
        visible GPU), else the CPU index."""
        import faiss

        from searchengine.index.devices import search_device, visible_gpus

        if search_device(self.index, k, visible_gpus()) == "cpu":
            return self.index
        if self._gpu is None:
            self._resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._resources, 0, self.index)
        return self._gpu

    def save(self, path: Path, manifest: Manifest) -> Manifest:
        """Write the index and its manifest atomically; returns the manifest as written."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        tmp = _temp_path(path)
        try:
            faiss.write_index(self.index, str(tmp))
            _fsync(tmp)
            manifest = Manifest(
                **{
                    **asdict(manifest),
                    "count": self.count,
                    "file_size": tmp.stat().st_size,
                    "id_sum": int(self.ids().sum()),
                }
            )
            _write_atomic(manifest_path(path), json.dumps(asdict(manifest), indent=2).encode())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return manifest

    @classmethod
    def load(cls, path: Path, expected: Manifest) -> VectorIndex:
        """Open an index file, checking it against its manifest and the expected identity.

        Raises `IndexMismatchError` saying what differs; the caller rebuilds from the catalog.
        """
        import faiss

        manifest = read_manifest(path)
        for field in ("model", "modality", "kind", "dim", "catalog_revision"):
            if getattr(manifest, field) != getattr(expected, field):
                raise IndexMismatchError(
                    f"{path.name}: manifest says {field}={getattr(manifest, field)!r}, expected "
                    f"{getattr(expected, field)!r}"
                )
        if not path.is_file() or path.stat().st_size != manifest.file_size:
            raise IndexMismatchError(
                f"{path.name} is missing or its size differs from its manifest"
            )
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise IndexMismatchError(f"{path.name} cannot be read: {error}") from error
        if index.ntotal != manifest.count or index.d != manifest.dim:
            raise IndexMismatchError(
                f"{path.name} holds {index.ntotal} vectors, manifest says {manifest.count}"
            )
        return cls(index, manifest.kind, manifest.dim)


def ivf_lists(n: int) -> int:
    """About sqrt(n) inverted lists, with at least 39 training points per list (FAISS' minimum)."""
    return max(1, min(int(np.sqrt(max(n, 1))), n // 39))


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(manifest_path(path).read_text())
        return Manifest(**data)
    except FileNotFoundError:
        raise IndexMismatchError(f"{path.name} has no manifest") from None
    except (ValueError, TypeError) as error:
        raise IndexMismatchError(f"{path.name}: unreadable manifest ({error})") from None


_TEMP_NAME = re.compile(r"\.(?:pid(?P<pid>\d+)\.)?[A-Za-z0-9_-]+\.tmp$")


def _temp_path(path: Path) -> Path:
    """A new file `<name>.pid<writer's pid>.<random>.tmp` beside `path`; the pid lets a later
    writer tell a crashed writer's leftover from a file being written right now."""
    while True:
        tmp = path.with_name(f"{path.name}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp")
        with contextlib.suppress(FileExistsError):
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return tmp


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary index and manifest files that no live process is writing.

    A file named with a pid is stale when that process is gone; an older unnamed one
    (`<name>.<random>.tmp`, before pids were recorded) when untouched for STALE_TEMP_SECONDS.
    Returns the files removed.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            match = _TEMP_NAME.search(entry.name)
            if match is None or ".faiss" not in entry.name or not entry.is_file():
                continue
            pid = match.group("pid")
            with contextlib.suppress(FileNotFoundError):
                if pid is not None:
                    stale = int(pid) != os.getpid() and not process_alive(int(pid))
                else:
                    stale = time.time() - entry.stat().st_mtime > STALE_TEMP_SECONDS
                if stale:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                    log.info("removed %s, left by a writer that stopped", entry.name)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _training_sample(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], count: int, size: int
) -> np.ndarray:
    """(<= size, d) float32: every ceil(count / size)-th vector of the batches, in order."""
    step = max(1, -(-count // max(size, 1)))
    parts, seen = [], 0
    for _, vectors in batches:
        first = (-seen) % step  # the first row of this batch on the global stride
        parts.append(np.asarray(vectors[first::step], dtype=np.float32))
        seen += len(vectors)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
