"""FAISS indexes against NumPy brute force; manifests; atomic files."""

# faiss' short names (D scores, I ids) are the house style in vector code.
# ruff: noqa: E741

from __future__ import annotations

import json

import numpy as np
import pytest
from float_noise import assert_top_k, score_noise

from searchengine.errors import IndexMismatchError, InvalidInputError
from searchengine.index.vectors import (
    INDEX_KINDS,
    Manifest,
    VectorIndex,
    manifest_path,
    read_manifest,
)

DIM = 32


def unit_rows(n: int, seed: int) -> np.ndarray:
    """(n, DIM) float32 unit vectors."""
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int):
    """Exact top-k by inner product: (m, k) scores and (m, k) ids, ties broken by position."""
    scores = xq @ xb.T  # (m, n)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


@pytest.fixture(scope="module")
def data():
    xb = unit_rows(2000, seed=1)
    ids = np.arange(10, 10 + 2 * len(xb), 2, dtype=np.int64)  # not 0..n-1: ids are catalog ids
    xq = unit_rows(50, seed=2)
    return xb, ids, xq


def manifest(kind: str = "flat", **changes) -> Manifest:
    values = dict(model="test/random", modality="image", kind=kind, dim=DIM, count=0,
                  catalog_revision="0001")
    return Manifest(**{**values, **changes})


def recall(I_ref: np.ndarray, I_new: np.ndarray) -> float:
    """Mean share of the true top-k found, over the query rows."""
    found = [len(set(a) & set(b)) / len(a) for a, b in zip(I_ref, I_new, strict=True)]
    return float(np.mean(found))


def test_flat_hits_equal_brute_force(data):
    xb, ids, xq = data
    index = VectorIndex.build("flat", DIM, ids, xb)
    D, I = index.search(xq, 10)
    D_ref, _ = brute_force(xb, ids, xq, 10)
    assert_top_k(I, xq, xb, ids)  # the same ids, up to order among float-noise ties
    np.testing.assert_allclose(D_ref, D, rtol=0, atol=score_noise(DIM))
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == (50, 10)


# Uniform random 32-d vectors are the worst case for IVF; clustered data does far better.
@pytest.mark.parametrize("kind, bound", [("hnsw", 0.95), ("ivf", 0.75)])
def test_approximate_kinds_recall_against_brute_force(data, kind, bound):
    xb, ids, xq = data
    index = VectorIndex.build(kind, DIM, ids, xb)
    D, I = index.search(xq, 10)
    _, I_ref = brute_force(xb, ids, xq, 10)
    assert recall(I_ref, I) >= bound
    assert set(I.ravel().tolist()) <= set(ids.tolist())
    assert np.all(np.diff(D, axis=1) <= 1e-6)  # scores descending


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_filtered_search_equals_brute_force_over_the_subset(data, kind):
    xb, ids, xq = data
    index = VectorIndex.build(kind, DIM, ids, xb)
    rows = np.random.default_rng(3).choice(len(xb), size=300, replace=False)
    allowed = ids[rows]
    D, I = index.search(xq, 5, allowed_ids=allowed)
    assert set(I.ravel().tolist()) - {-1} <= set(allowed.tolist())
    # every kind: a selective filter is answered exactly (tests/test_filtered_search.py)
    assert_top_k(I, xq, xb[rows], allowed)


def test_filter_smaller_than_k_pads_with_minus_one(data):
    xb, ids, xq = data
    index = VectorIndex.build("flat", DIM, ids, xb)
    D, I = index.search(xq[:1], 5, allowed_ids=ids[[3, 7]])
    assert sorted(I[0, :2].tolist()) == sorted(ids[[3, 7]].tolist())
    assert I[0, 2:].tolist() == [-1, -1, -1]


def test_k_larger_than_the_index_is_clamped(data):
    xb, ids, _ = data
    index = VectorIndex.build("flat", DIM, ids[:3], xb[:3])
    D, I = index.search(xb[0], 10)
    assert I.shape == (1, 3) and I[0, 0] == ids[0]


def test_empty_index_searches_to_nothing():
    index = VectorIndex.build("flat", DIM)
    D, I = index.search(unit_rows(1, 0), 3)
    assert index.count == 0 and I.tolist() == [[-1]]


def test_add_remove_and_ids(data):
    xb, ids, xq = data
    index = VectorIndex.build("flat", DIM, ids[:100], xb[:100])
    assert index.remove(ids[:10]) == 10
    index.add(ids[100:110], xb[100:110])
    kept = np.r_[10:110]
    assert sorted(index.ids().tolist()) == sorted(ids[kept].tolist())
    D, I = index.search(xq, 4)
    assert_top_k(I, xq, xb[kept], ids[kept])
    np.testing.assert_allclose(index.reconstruct(ids[50]), xb[50])


def test_ivf_built_empty_trains_on_its_first_add(data):
    xb, ids, xq = data
    index = VectorIndex.build("ivf", DIM)
    index.add(ids, xb)
    _, I = index.search(xq, 10)
    _, I_ref = brute_force(xb, ids, xq, 10)
    assert recall(I_ref, I) >= 0.5


@pytest.mark.parametrize("kind", ["hnsw"])
def test_approximate_kinds_refuse_removal_in_place(kind):
    """HNSW cannot drop points: it is rebuilt from the catalog instead (see
    spaces.VectorSpace.remove). The IVF kinds remove in place (tests/test_index_kinds.py)."""
    index = VectorIndex.build(kind, DIM, np.arange(50), unit_rows(50, 0))
    assert index.needs_rebuild_on_remove
    with pytest.raises(InvalidInputError, match=f"{kind} indexes cannot remove"):
        index.remove(np.array([1]))


def test_flat_removal_keeps_every_id_on_its_own_vector(data):
    xb, ids, xq = data
    index = VectorIndex.build("flat", DIM, ids[:200], xb[:200])
    index.remove(ids[[0, 57, 120]])
    D, I = index.search(xq, 20)
    by_id = dict(zip(ids.tolist(), xb, strict=True))
    for scores, row, query in zip(D, I, xq, strict=True):
        np.testing.assert_allclose(scores, [by_id[i] @ query for i in row], rtol=0,
                                   atol=score_noise(DIM))


def test_wrong_shapes_and_kinds_are_errors():
    index = VectorIndex.build("flat", DIM)
    with pytest.raises(InvalidInputError, match="dimension"):
        index.add(np.arange(2), np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(InvalidInputError, match="dimension"):
        index.search(np.zeros((1, DIM - 1), np.float32), 1)
    with pytest.raises(InvalidInputError, match="unknown index kind 'annoy'.*flat.*hnsw.*ivf"):
        VectorIndex.build("annoy", DIM)


@pytest.mark.parametrize("kind", sorted(INDEX_KINDS))
def test_save_and_load_round_trip(data, tmp_path, kind):
    xb, ids, xq = data
    index = VectorIndex.build(kind, DIM, ids[:500], xb[:500])
    path = tmp_path / "vectors" / f"x.{kind}.faiss"
    written = index.save(path, manifest(kind))
    assert written.count == 500 and written.file_size == path.stat().st_size
    assert read_manifest(path) == written
    assert json.loads(manifest_path(path).read_text())["dim"] == DIM
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []  # no leftovers
    loaded = VectorIndex.load(path, manifest(kind))
    np.testing.assert_array_equal(index.search(xq, 5)[1], loaded.search(xq, 5)[1])


@pytest.mark.parametrize(
    "expected, message",
    [
        (manifest(model="other/random"), "model"),
        (manifest(kind="hnsw"), "kind"),
        (manifest(dim=DIM * 2), "dim"),
        (manifest(catalog_revision="0002"), "catalog_revision"),
    ],
)
def test_load_refuses_a_manifest_that_does_not_match(data, tmp_path, expected, message):
    xb, ids, _ = data
    path = tmp_path / "x.faiss"
    VectorIndex.build("flat", DIM, ids[:20], xb[:20]).save(path, manifest())
    with pytest.raises(IndexMismatchError, match=message):
        VectorIndex.load(path, expected)


def test_load_refuses_missing_manifest_garbage_and_truncation(data, tmp_path):
    xb, ids, _ = data
    path = tmp_path / "x.faiss"
    index = VectorIndex.build("flat", DIM, ids[:20], xb[:20])
    index.save(path, manifest())
    path.write_bytes(path.read_bytes()[:-100])  # truncated: size differs from the manifest
    with pytest.raises(IndexMismatchError, match="size"):
        VectorIndex.load(path, manifest())
    index.save(path, manifest())
    path.write_bytes(b"\0garbage" * (path.stat().st_size // 8) + b"\0" * (path.stat().st_size % 8))
    with pytest.raises(IndexMismatchError, match="cannot be read"):
        VectorIndex.load(path, manifest())
    manifest_path(path).write_text("{not json")
    with pytest.raises(IndexMismatchError, match="manifest"):
        VectorIndex.load(path, manifest())
    manifest_path(path).unlink()
    with pytest.raises(IndexMismatchError, match="no manifest"):
        VectorIndex.load(path, manifest())
