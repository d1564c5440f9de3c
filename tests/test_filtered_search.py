"""Filtered search loses no hits under any index kind: against float64 brute force over the
allowed vectors, on both roads (exact over the allowed vectors, and the index's own search with
a selector and widened parameters), through the engine too; and where searches run (CPU here)."""

# faiss' short names (D scores, I ids) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MODEL
from float_noise import assert_top_k, score_noise

from searchengine.index.devices import search_device, visible_gpus
from searchengine.index.search import (
    IndexShape,
    filtered_search,
    id_selector,
    index_shape,
    plan_filtered_search,
)
from searchengine.index.vectors import INDEX_KINDS, VectorIndex

DIM = 32
K = 10


def clustered_rows(n: int, clusters: int, seed: int) -> np.ndarray:
    """(n, DIM) float32 unit vectors in `clusters` tight groups: real embeddings have neighbours
    (uniform random ones have none), so every approximate kind finds the true top-k unfiltered."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    x = centres[rng.integers(clusters, size=n)] + 0.15 * rng.normal(size=(n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    xb = clustered_rows(3000, 30, seed=1)
    ids = np.arange(7, 7 + 3 * len(xb), 3, dtype=np.int64)  # catalog ids, not row numbers
    rng = np.random.default_rng(2)
    xq = xb[rng.choice(len(xb), 20, replace=False)] + 0.05 * rng.normal(size=(20, DIM))
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    return xb, ids, xq


@pytest.fixture(scope="module")
def indexes(data):
    xb, ids, _ = data
    return {kind: VectorIndex.build(kind, DIM, ids, xb) for kind in INDEX_KINDS}


def assert_equals_brute_force(D, I, xq, xb, ids, k):
    """I is a true top-min(k, n) of xq over (xb, ids) and D its scores within float noise."""
    found = min(k, len(ids))
    assert (I[:, :found] >= 0).all(), "a hit is lost"
    assert (I[:, found:] == -1).all()
    assert_top_k(I[:, :found], xq, xb, ids)
    column = {int(i): c for c, i in enumerate(ids.tolist())}
    exact = np.array([[xq[q].astype(np.float64) @ xb[column[int(i)]] for i in row]
                      for q, row in enumerate(I[:, :found])])  # (m, found) float64
    np.testing.assert_allclose(D[:, :found], exact, rtol=0, atol=score_noise(DIM))


# a handful of ids (exact road), a tenth, and most ids (the selector road for approximate kinds)
@pytest.mark.parametrize("share", [0.002, 0.1, 0.9])
@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_filtered_search_equals_brute_force_over_the_allowed_vectors(data, indexes, kind, share):
    xb, ids, xq = data
    rows = np.sort(np.random.default_rng(3).choice(len(xb), int(share * len(xb)), replace=False))
    allowed = ids[rows]
    for q in range(len(xq)):  # one query a search, as a lookup makes
        D, I = indexes[kind].search(xq[q : q + 1], K, allowed_ids=allowed)
        assert_equals_brute_force(D, I, xq[q : q + 1], xb[rows], allowed, K)


def test_both_roads_are_taken(indexes, data):
    """The cost model sends a handful of ids down the exact road and most ids of an approximate
    index down the selector road for one query (so the test above covers both)."""
    _, ids, _ = data
    for kind, index in indexes.items():
        shape = index_shape(index, exact_vectors=True)
        assert plan_filtered_search(shape, 6, K, 1).road == "exact"
        if kind != "flat":  # (a flat index is exact on either road)
            broad = plan_filtered_search(shape, int(0.9 * len(ids)), K, 1)
            assert broad.road == "selector", kind


def test_widened_parameters_follow_the_selectivity():
    ivf = IndexShape(100_000, 512, nlist=316, nprobe=16)
    assert plan_filtered_search(ivf, 50_000, 10, 1).nprobe == 32  # 16 / 0.5
    assert plan_filtered_search(ivf, 100_000, 10, 1).nprobe == 16  # no filter: as configured
    hnsw = IndexShape(100_000, 512, ef_search=64)
    assert plan_filtered_search(hnsw, 50_000, 10, 1).ef_search == 128  # 64 / 0.5
    assert plan_filtered_search(hnsw, 50_000, 100, 1).ef_search == 200  # k / s past efSearch
    assert plan_filtered_search(hnsw, 200, 10, 1).road == "exact"  # efSearch would pass EF_MAX


def probed_lists(index: VectorIndex, x: np.ndarray, nprobe: int) -> np.ndarray:
    """(m, nprobe) int64: the IVF lists FAISS probes for (m, d) vectors (their nearest
    centroids; a vector is stored in its first)."""
    import faiss

    _, lists = faiss.extract_index_ivf(index.index).quantizer.search(x, nprobe)
    return lists


def ivf_with_one_probe(data) -> VectorIndex:
    xb, ids, _ = data
    index = VectorIndex.build("ivf", DIM, ids, xb)
    index._inner().nprobe = 1  # the setting under which a selector loses most
    return index


def test_ivf_filter_outside_the_probed_lists_falls_back_to_exact(data):
    """The old selector-only search probed the query's nearest list, which holds no allowed
    vector, and answered nothing; the widened search comes back short and is answered exactly."""
    xb, ids, xq = data
    index = ivf_with_one_probe(data)
    xq = xq[:2]
    home_lists = probed_lists(index, xb, 1)[:, 0]  # (n,)
    near = np.unique(probed_lists(index, xq, 3))  # the 3 lists nearest each query
    rows = np.flatnonzero(~np.isin(home_lists, near))
    plan = plan_filtered_search(index_shape(index, exact_vectors=True), len(rows), K, len(xq))
    assert plan.road == "selector" and plan.nprobe < 3  # so the widened probes find nothing
    D, I = index.search(xq, K, allowed_ids=ids[rows])
    assert_equals_brute_force(D, I, xq, xb[rows], ids[rows], K)


def test_ivf_selector_probes_lists_widened_for_the_selectivity(data):
    """A quarter of the ids allowed and nprobe 1: the search probes 4 lists, so it finds what
    brute force finds among the allowed vectors of those 4 lists (the old search probed 1)."""
    xb, ids, xq = data
    index = ivf_with_one_probe(data)
    rows = np.sort(np.random.default_rng(4).choice(len(xb), len(xb) // 4, replace=False))
    plan = plan_filtered_search(index_shape(index, exact_vectors=True), len(rows), K, len(xq))
    assert (plan.road, plan.nprobe) == ("selector", 4)
    D, I = index.search(xq, K, allowed_ids=ids[rows])
    home_lists = probed_lists(index, xb[rows], 1)[:, 0]
    for q, lists in enumerate(probed_lists(index, xq, 4)):
        reach = rows[np.isin(home_lists, lists)]
        assert_equals_brute_force(D[q : q + 1], I[q : q + 1], xq[q : q + 1], xb[reach],
                                  ids[reach], K)


def test_compressed_vectors_are_read_from_the_durable_copy(data, indexes):
    """Where the index does not store whole vectors, the exact road reads them through
    `vectors_of` (the catalog in the engine): ids it cannot find there are no hits."""
    xb, ids, xq = data
    rows = np.arange(0, 40)
    asked = []

    def vectors_of(wanted: np.ndarray):
        asked.append(wanted.copy())
        keep = np.isin(ids, wanted) & (np.arange(len(ids)) % 2 == 0)  # half are "gone"
        return ids[keep], xb[keep]

    class Compressed(VectorIndex):
        stores_exact_vectors = False  # as a compressed kind says of itself

    index = Compressed(indexes["hnsw"].index, "hnsw", DIM)
    D, I = filtered_search(index, xq, K, ids[rows], vectors_of=vectors_of)
    assert len(asked) == 1 and sorted(asked[0].tolist()) == sorted(ids[rows].tolist())
    even = rows[rows % 2 == 0]
    assert_equals_brute_force(D, I, xq, xb[even], ids[even], K)


def test_allowed_ids_the_index_does_not_hold_are_ignored(data, indexes):
    xb, ids, xq = data
    allowed = np.concatenate([ids[:3], [1, 2, 10**9], ids[:3]])  # unknown ids and repeats
    for index in indexes.values():
        D, I = index.search(xq[:2], K, allowed_ids=allowed)
        assert_equals_brute_force(D, I, xq[:2], xb[:3], ids[:3], K)
        D, I = index.search(xq[:2], K, allowed_ids=np.zeros(0, dtype=np.int64))
        assert (I == -1).all() and D.shape == (2, K)


@pytest.mark.parametrize("extra", [[], [2**40]], ids=["bitmap", "hash set"])
def test_selectors_hold_exactly_the_allowed_ids(extra):
    allowed = np.array([3, 5, 64, 65, 1000, 4095, *extra], dtype=np.int64)
    selector, bits = id_selector(allowed)
    assert (bits is None) == bool(extra)
    probe = np.concatenate([np.arange(40_000), [2**40, 2**40 + 1, 2**62]])  # past the bitmap
    chosen = [i for i in probe.tolist() if selector.is_member(i)]
    assert chosen == sorted(allowed.tolist())


def test_searches_run_on_the_cpu_without_a_visible_gpu(data, indexes):
    """The device choice is honest about this machine: with no GPU visible (faiss-cpu, or no
    device) every kind searches on the CPU, and the answer is the plain CPU index's."""
    import faiss

    _, _, xq = data
    gpus = visible_gpus()
    if gpus:
        pytest.skip("a GPU is visible: this test is about the CPU path")
    for kind, index in indexes.items():
        assert search_device(index.index, K, gpus) == "cpu", kind
        D, I = index.search(xq, K)
        D_cpu, I_cpu = index.index.search(xq, K)
        np.testing.assert_array_equal(I, I_cpu)
        np.testing.assert_array_equal(D, D_cpu)
    assert gpus == (faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0)


def test_only_flat_and_ivf_have_gpu_twins(indexes):
    """With a GPU, flat and IVF would move there and HNSW stay; k past FAISS' GPU bound stays."""
    assert {kind: search_device(index.index, K, 1) for kind, index in indexes.items()} == {
        "flat": "gpu", "hnsw": "cpu", "ivf": "gpu"}
    assert search_device(indexes["flat"].index, 4096, 1) == "cpu"


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_lookup_in_a_text_set_on_an_approximate_index_equals_flat(
    open_engine, indexed_home, tmp_path, photo_folder, kind
):
    """`lookup --text-set` over an HNSW or IVF text index returns what the flat one does: the
    exact top-k among the set's texts, though they are a few spread among many."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(indexed_home, home)
    engine = open_engine(home)
    rng = np.random.default_rng(5)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(300)]
    texts = [" ".join(rng.choice(words, 4)) for _ in range(800)]  # spread-out embeddings
    engine.add_texts(texts, text_set="bulk", model=TINY_MODEL)
    engine.add_texts(texts[::100], text_set="few", model=TINY_MODEL)  # 8 spread over the bulk
    images = [photo_folder / f"photo_{i}.jpg" for i in range(4)]
    flat = [engine.lookup(image, k=6, text_set="few") for image in images]
    engine.space(TINY_MODEL, "text", create=True, kind=kind)
    approximate = [engine.lookup(image, k=6, text_set="few") for image in images]
    assert engine.space(TINY_MODEL, "text").index.kind == kind
    ids, vectors = engine.vectors("text", ids=list(engine.text_ids("few").values()))
    for image, result, reference in zip(images, approximate, flat, strict=True):
        query, _ = engine.image_vector(image)
        for answer in (reference, result):
            found = np.array([[hit.id for hit in answer.hits]])
            scores = np.array([[hit.score for hit in answer.hits]], dtype=np.float32)
            assert_equals_brute_force(scores, found, query, vectors, ids, 6)
