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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from searchengine.errors import IndexMismatchError, InvalidInputError
from searchengine.index.kinds import (
    COMPRESSED_KINDS,
    INDEX_KINDS,
    IVF_KINDS,
    KIND_CHOICES,
    TRAIN_PER_LIST,
    IndexPlan,
    check_kind,
    ivf_lists,
    plan_index,
)
from searchengine.index.tuning import RERANK, Tuning, apply_params

log = logging.getLogger(__name__)

__all__ = ["COMPRESSED_KINDS", "INDEX_KINDS", "KIND_CHOICES", "check_kind", "ivf_lists"]
MANIFEST_VERSION = 2  # 2: IVF kinds hold ids natively (1 wrapped them in IndexIDMap2)
SMALL_TRAINING = 1_000_000  # floats: IVF training samples smaller than this run on one thread
# queries: fewer search on one OpenMP thread. FAISS splits a search over its queries, so a lone
# query gains nothing from a second thread, and on a busy host waiting for it costs more than
# the search (a flat 10k x 512 query: 1.0 ms on one thread, 40 ms on two; bench/scale.py)
FEW_QUERIES = 4
STALE_TEMP_SECONDS = 3600  # a temporary file without a writer's pid is stale after this long


@dataclass(frozen=True)
class Manifest:
    """What an index file claims to hold; compared with the catalog when opened."""

    model: str
    modality: str
    kind: str  # the kind built (auto resolves to one; see `chosen_by_auto`)
    dim: int
    count: int
    catalog_revision: str
    file_size: int = 0
    version: int = MANIFEST_VERSION
    id_sum: int | None = None  # sum of the ids held; with `count`, compared with the catalog
    factory: str = ""  # faiss.index_factory string the index was built from
    planned_count: int = 0  # vectors its structure (IVF lists, PQ codes) was planned for
    nlist: int = 0
    pq_bits: int = 0
    chosen_by_auto: bool = False
    params: dict = field(default_factory=dict)  # search parameters, applied on load
    recall: float | None = None  # recall@10 measured when tuned (1.0 for exact kinds)
    target_recall: float | None = None
    tuned_count: int = 0  # vectors held when the parameters were tuned
    build_seconds: float | None = None  # train + add + tune, when last built
    memory_bytes: int = 0  # bytes of the index as written (what loading it holds)
    # `Catalog.identity` of the catalog the vectors came from (None: written before files named
    # their catalog); an index is read only against that catalog
    catalog_id: str | None = None


class VectorIndex:
    """A FAISS index mapping catalog ids to unit vectors, searched by inner product.

    Built by `faiss.index_factory` from its plan's string (`searchengine.index.kinds`): flat and
    HNSW inside an IndexIDMap2, the IVF kinds holding the ids in their lists themselves.
    """

    def __init__(
        self,
        index,
        kind: str,
        dim: int,
        *,
        plan: IndexPlan | None = None,
        tuning: Tuning | None = None,
        build_seconds: float | None = None,
    ):
        self.index = index  # the FAISS index (CPU copy): IndexIDMap2 or an IndexIVF
        self.kind = kind
        self.dim = dim
        self.plan = plan or plan_index(kind, dim, int(index.ntotal))
        self.tuning = tuning  # search parameters and the recall they measured, once tuned
        self.build_seconds = build_seconds
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
        *,
        plan: IndexPlan | None = None,
    ) -> VectorIndex:
        """A new index of `count` vectors read as batches of ((b,) int64 ids, (b, d) float32).

        `batches()` is called once for the vectors (twice for IVF kinds: first for a training
        sample of at most TRAIN_PER_LIST vectors a list, spread evenly over the ids), so no more
        than a batch and the sample are ever in memory besides the index itself. `plan` (from
        `plan_index`) overrides the kind's plan for `count`.
        """
        start = time.perf_counter()
        index = cls.empty(kind, dim, count, plan=plan)
        if index.kind in IVF_KINDS and count:
            sample = _training_sample(batches(), count, index.plan.nlist * TRAIN_PER_LIST)
            index.train(sample)
        for ids, vectors in batches():
            index.add(ids, vectors)
        index.build_seconds = time.perf_counter() - start
        return index

    @classmethod
    def empty(
        cls, kind: str, dim: int, expected: int, *, plan: IndexPlan | None = None
    ) -> VectorIndex:
        """An empty index of `kind` planned for `expected` vectors (IVF lists, PQ code bits)."""
        import faiss

        if plan is None:
            if check_kind(kind) == "auto":
                raise InvalidInputError("auto is resolved to a kind by `plan_index` first")
            plan = plan_index(kind, dim, expected)
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        made = cls(index, plan.kind, dim, plan=plan)
        inner = made._inner()
        if plan.kind == "hnsw":
            inner.hnsw.efConstruction = 80
            inner.hnsw.efSearch = 64  # until tuned
        elif plan.kind in IVF_KINDS:
            inner.nprobe = min(16, plan.nlist)  # until tuned
        return made

    def train(self, vectors: np.ndarray) -> None:
        """Train an IVF index on (n, d) float32 vectors (other kinds need nothing), its k-means on
        a GPU when faiss-gpu sees one. A sample smaller than the PQ codebooks need is repeated to
        their size."""
        from searchengine.index.devices import gpu_training, visible_gpus

        if self.kind not in IVF_KINDS or not len(vectors) or self._inner().is_trained:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        needed = max(1 << self.plan.pq_bits, self.plan.nlist)
        if len(vectors) < needed:
            vectors = np.tile(vectors, (-(-needed // len(vectors)), 1))
        inner = self._inner()
        # small homes train on few points a list by design (the next writer rebuilds the lists
        # once the home outgrows them): no FAISS warning about it on the user's terminal
        inner.cp.min_points_per_centroid = 1
        if hasattr(inner, "pq"):
            inner.pq.cp.min_points_per_centroid = 1
        with _one_thread_below(vectors.size, SMALL_TRAINING), gpu_training(inner, visible_gpus()):
            inner.train(vectors)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def stores_exact_vectors(self) -> bool:
        """Whether `reconstruct` gives back the vectors added (False for compressed codes)."""
        return self.kind not in COMPRESSED_KINDS

    @property
    def rerank(self) -> int:
        """Candidates a hit that a compressed kind re-scores with the durable vectors when it can
        read them (the tuned value, else RERANK); 1 for kinds that store vectors whole."""
        if self.stores_exact_vectors:
            return 1
        return int((self.tuning.params if self.tuning else {}).get("rerank", RERANK))

    @property
    def wants_retraining(self) -> bool:
        """An IVF index built on few vectors has too few lists once many more arrive."""
        if self.kind not in IVF_KINDS:
            return False
        return self.plan.nlist * 2 < ivf_lists(self.count)

    @property
    def needs_rebuild_on_remove(self) -> bool:
        """Only HNSW is rebuilt from the catalog to drop ids: its graph cannot drop points.

        Flat renumbers its rows (IndexIDMap2 follows); IVF lists hold the catalog ids
        themselves (no IndexIDMap2, whose id map would shift after an IVF removal)."""
        return self.kind == "hnsw"

    def _inner(self):
        import faiss

        if self.kind in IVF_KINDS:
            return faiss.downcast_index(self.index)
        return faiss.downcast_index(self.index.index)

    def ids(self) -> np.ndarray:
        """(n,) int64 ids held: in insertion order (flat, hnsw), list by list (IVF kinds)."""
        import faiss

        if self.kind not in IVF_KINDS:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self._inner().invlists
        parts = [np.zeros(0, dtype=np.int64)]
        for number in range(lists.nlist):
            size = lists.list_size(number)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
        return np.concatenate(parts).astype(np.int64)

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
        """Remove ids in place (flat and IVF kinds); returns how many were present."""
        import faiss

        if self.needs_rebuild_on_remove:
            raise InvalidInputError(
                f"{self.kind} indexes cannot remove vectors; rebuild from the catalog"
            )
        self._gpu = self._held = None
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind in IVF_KINDS and self._inner().direct_map.type != 0:
            return int(self.index.remove_ids(faiss.IDSelectorArray(ids)))  # a hashtable map
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def reconstruct(self, vector_id: int) -> np.ndarray:
        """(d,) float32 vector stored for `vector_id` (decoded, for compressed kinds)."""
        self._direct_map()
        return self.index.reconstruct(int(vector_id))

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """(n, d) float32 vectors stored for (n,) int64 `ids` (all held)."""
        self._direct_map()
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def stored_form(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) float32: what the index stores for (n, d) `vectors` (themselves, or their
        decoded codes for compressed kinds), to compare with `reconstruct_batch`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.stores_exact_vectors:
            return vectors
        inner = self._inner()
        return inner.sa_decode(inner.sa_encode(vectors))

    def _direct_map(self) -> None:
        import faiss

        if self.kind in IVF_KINDS and self._inner().direct_map.type == 0:  # NoMap
            # IVF rows are found by id through a hash map built on demand (an array map would
            # refuse catalog ids); it follows later adds and removals
            self._inner().set_direct_map_type(faiss.DirectMap.Hashtable)

    def apply_tuning(self, tuning: Tuning) -> None:
        """Set the search parameters `tuning` chose and keep its record for the manifest."""
        apply_params(self.index, tuning.params)
        self.tuning = tuning
        self._gpu = None

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
        vectors for kinds that do not store them whole: with it, a compressed kind's candidates
        are re-scored exactly (`rerank`).
        """
        from searchengine.index.search import filtered_search, reranked_search

        xq = np.ascontiguousarray(np.atleast_2d(xq), dtype=np.float32)
        if xq.shape[1] != self.dim:
            raise InvalidInputError(f"query dimension {xq.shape[1]} != index dimension {self.dim}")
        k = max(1, min(int(k), max(self.count, 1)))
        with _one_thread_below(len(xq), FEW_QUERIES):
            if allowed_ids is None and vectors_of is not None and self.rerank > 1:
                return reranked_search(self, xq, k, vectors_of, self.rerank)
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
                    **self.build_record(),
                    "memory_bytes": tmp.stat().st_size,
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
        for name in ("model", "modality", "kind", "dim", "catalog_revision"):
            if getattr(manifest, name) != getattr(expected, name):
                raise IndexMismatchError(
                    f"{path.name}: manifest says {name}={getattr(manifest, name)!r}, expected "
                    f"{getattr(expected, name)!r}"
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
        if manifest.kind in IVF_KINDS and not isinstance(faiss.downcast_index(index),
                                                         faiss.IndexIVF):
            raise IndexMismatchError(f"{path.name} wraps its IVF lists in an id map (version 1)")
        plan = IndexPlan(
            kind=manifest.kind,
            factory=manifest.factory or plan_index(manifest.kind, manifest.dim, 0).factory,
            count=manifest.planned_count or manifest.count,
            memory_bytes=manifest.memory_bytes or manifest.file_size,
            nlist=manifest.nlist or getattr(faiss.downcast_index(index), "nlist", 0),
            pq_bits=manifest.pq_bits,
            chosen_by_auto=manifest.chosen_by_auto,
        )
        loaded = cls(index, manifest.kind, manifest.dim, plan=plan,
                     build_seconds=manifest.build_seconds)
        if manifest.recall is not None:
            loaded.apply_tuning(Tuning(
                dict(manifest.params),
                manifest.recall,
                manifest.target_recall or manifest.recall,
                vectors=manifest.tuned_count,
            ))
        return loaded

    def build_record(self) -> dict:
        """The manifest fields that say how this index was built and tuned."""
        tuning = self.tuning
        return {
            "factory": self.plan.factory,
            "planned_count": self.plan.count,
            "nlist": self.plan.nlist,
            "pq_bits": self.plan.pq_bits,
            "chosen_by_auto": self.plan.chosen_by_auto,
            "params": dict(tuning.params) if tuning else {},
            "recall": tuning.recall if tuning else None,
            "target_recall": tuning.target if tuning else None,
            "tuned_count": tuning.vectors if tuning else 0,
            "build_seconds": self.build_seconds,
        }


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
        # a copy, not a view: a view keeps its whole batch alive, and so every batch (a 10M
        # build of 512-d vectors held 20 GB this way)
        parts.append(np.array(vectors[first::step], dtype=np.float32))
        seen += len(vectors)
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


@contextlib.contextmanager
def _one_thread_below(size: int, limit: int):
    """Run FAISS on one OpenMP thread while `size` < `limit`: a small PQ training or a lone query
    spends its time in OpenMP waits, not work (500 x 16 floats: 5 s on 2 spinning threads of a
    busy 2-core host, 0.02 s on one). The thread count is the calling thread's own (an OpenMP
    setting per thread), so concurrent searches in `serve` do not disturb each other."""
    import faiss

    if size >= limit:
        yield
        return
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


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
