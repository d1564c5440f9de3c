"""Where a FAISS index is searched and trained: a GPU when faiss-gpu sees one, else the CPU.

Flat and IVF indexes (any IVF: flat, scalar-quantized or PQ lists) have GPU twins; HNSW has
none. A GPU search answers the same top-k as the CPU one up to float rounding. Filtered searches
stay on the CPU: FAISS' GPU indexes take no id selector.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

GPU_MAX_K = 2048  # FAISS' GPU k-selection handles k (and nprobe) up to this


def visible_gpus() -> int:
    """How many GPUs FAISS can use: 0 with a CPU-only faiss build or no visible GPU."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def search_device(index, k: int, gpus: int) -> str:
    """"gpu" or "cpu": where to search the FAISS `index` (an IndexIDMap2 around the kind's
    index) for the top `k`, with `gpus` visible GPUs (`visible_gpus()`)."""
    if gpus < 1 or k > GPU_MAX_K or not has_gpu_twin(index):
        return "cpu"
    return "gpu"


def has_gpu_twin(index) -> bool:
    """Can `index_cpu_to_gpu` copy this index: flat or IVF inside the id map, not HNSW."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return ivf.nprobe <= GPU_MAX_K
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return isinstance(inner, faiss.IndexFlat)


@contextlib.contextmanager
def gpu_training(index, gpus: int) -> Iterator[None]:
    """Within the block, an IVF `index`'s k-means assigns points to centroids on a GPU (when
    `gpus` > 0); other indexes, and IVF without a GPU, train on the CPU as before."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index) if gpus > 0 else None
    if ivf is None:
        yield
        return
    flat = (
        faiss.IndexFlatIP(ivf.d)
        if ivf.metric_type == faiss.METRIC_INNER_PRODUCT
        else faiss.IndexFlatL2(ivf.d)
    )
    assigner = faiss.index_cpu_to_all_gpus(flat)  # kept alive here: FAISS holds a bare pointer
    ivf.clustering_index = assigner
    try:
        yield
    finally:
        ivf.clustering_index = None
