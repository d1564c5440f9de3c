"""Vector indexes: FAISS over (n, d) float32 unit vectors whose ids are catalog ids.

One index per (model, modality). An index file is derived data: the catalog holds every vector,
so a missing, stale or corrupt file is rebuilt from it. Files are written atomically (temporary
file, fsync, rename) next to a JSON manifest that is checked when the file is opened.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
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

    @classmethod
    def build(
        cls, kind: str, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None
    ) -> VectorIndex:
        """A new index of `kind`, holding (n,) int64 `ids` -> (n, d) float32 `vectors` if given."""
        import faiss

        check_kind(kind)
        n = 0 if ids is None else len(ids)
        if kind == "flat":
            inner = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = 80
            inner.hnsw.efSearch = 64
        else:
            nlist = ivf_lists(n)
            inner = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            inner.nprobe = min(16, nlist)
            if n:
                inner.train(np.ascontiguousarray(vectors, dtype=np.float32))
        vector_index = cls(faiss.IndexIDMap2(inner), kind, dim)
        if n:
            vector_index.add(ids, vectors)
        return vector_index

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

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with their (n, d) float32 unit vectors."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise InvalidInputError(
                f"expected {len(ids)} vectors of dimension {self.dim}, got shape {vectors.shape}"
            )
        if self.kind == "ivf" and not self._inner().is_trained:
            self._inner().train(vectors)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (flat kind only); returns how many were present."""
        import faiss

        if self.needs_rebuild_on_remove:
            raise InvalidInputError(
                f"{self.kind} indexes cannot remove vectors; rebuild from the catalog"
            )
        self._gpu = None
        return int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))

    def reconstruct(self, vector_id: int) -> np.ndarray:
        """(d,) float32 vector stored for `vector_id`."""
        return self.index.reconstruct(int(vector_id))

    def search(
        self, xq: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product for (m, d) float32 queries.

        Returns D (m, k) float32 scores, descending, and I (m, k) int64 ids; -1 pads rows when
        fewer than k vectors qualify. `allowed_ids` restricts the search through a FAISS id
        selector (no over-fetching).
        """
        import faiss

        xq = np.ascontiguousarray(np.atleast_2d(xq), dtype=np.float32)
        if xq.shape[1] != self.dim:
            raise InvalidInputError(f"query dimension {xq.shape[1]} != index dimension {self.dim}")
        k = max(1, min(int(k), max(self.count, 1)))
        if allowed_ids is None:
            return self._searcher().search(xq, k)
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
        params = _search_params(self.kind, selector, self._inner())
        return self.index.search(xq, k, params=params)

    def _searcher(self):
        """The GPU copy when faiss sees a GPU (flat kind), else the CPU index."""
        import faiss

        if self.kind != "flat" or not hasattr(faiss, "StandardGpuResources"):
            return self.index
        if faiss.get_num_gpus() == 0:
            return self.index
        if self._gpu is None:
            self._resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._resources, 0, self.index)
        return self._gpu

    def save(self, path: Path, manifest: Manifest) -> Manifest:
        """Write the index and its manifest atomically; returns the manifest as written."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(path)
        try:
            faiss.write_index(self.index, str(tmp))
            _fsync(tmp)
            manifest = Manifest(
                **{**asdict(manifest), "count": self.count, "file_size": tmp.stat().st_size}
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


def _search_params(kind: str, selector, inner):
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
    if kind == "ivf":
        return faiss.SearchParametersIVF(sel=selector, nprobe=inner.nprobe)
    return faiss.SearchParameters(sel=selector)


def _temp_path(path: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


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
