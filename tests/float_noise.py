"""How far two float32 computations of the same scores may differ, and comparisons that allow
exactly that much, so that the suite passes on any x86-64 or ARM CPU and still fails for a bug.

Two correct computations of one inner product of unit vectors in d dimensions (numpy's BLAS and
FAISS, different kernels, blockings, FMA or not) each make an error of at most d * eps32 *
sum|x_i y_i| <= d * eps32 (recursive summation bound, Higham 3.1), so they differ by at most
2 * d * eps32: 7.6e-6 in 32 dimensions. Rankings may differ only among candidates whose scores are
that close; anything further apart must come out in the same order everywhere.
"""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def score_noise(dim: int) -> float:
    """The largest difference two correct float32 computations of a cosine of unit vectors in
    `dim` dimensions can show."""
    return 2 * dim * EPS32


def assert_top_k(I: np.ndarray, xq: np.ndarray, xb: np.ndarray, ids: np.ndarray) -> None:
    """Assert that I (m, k) int64 ids is a true top-k of the queries xq (m, d) against the rows
    xb (n, d) with catalog ids `ids` (n,), by inner product: at every rank the returned id's exact
    (float64) score equals the exact k-th best score within `score_noise`, and no id repeats.
    So ids may swap only where their scores tie within float noise; a wrong id fails."""
    m, k = I.shape
    exact = xq.astype(np.float64) @ xb.astype(np.float64).T  # (m, n)
    column = {int(i): c for c, i in enumerate(ids.tolist())}
    missing = sorted({int(i) for i in I.ravel()} - set(column))
    assert not missing, f"ids not in the data: {missing[:5]}"
    got = np.array([[exact[q, column[int(i)]] for i in row] for q, row in enumerate(I)])
    best = -np.sort(-exact, axis=1)[:, :k]  # (m, k) the exact top-k scores
    np.testing.assert_allclose(got, best, rtol=0, atol=score_noise(xq.shape[1]))
    assert all(len(set(row)) == len(row) for row in I.tolist()), "an id repeats within a row"


def near_tie_queries(similarity: np.ndarray, positive: np.ndarray, dim: int) -> np.ndarray:
    """(m,) bool: the queries whose first-hit rank float noise can change, because a candidate
    that is not relevant scores within `score_noise(dim)` of the query's best relevant one.

    similarity: (m, n) scores of unit vectors in `dim` dimensions; positive: (m, n) bool.
    """
    scores = similarity.astype(np.float64)
    best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)  # (m, 1)
    return (~positive & (np.abs(scores - best) <= score_noise(dim))).any(axis=1)


def recall_slack(
    image_vectors: np.ndarray, text_vectors: np.ndarray, text_to_image: np.ndarray
) -> tuple[float, float]:
    """(text->image, image->text): the most by which two correct computations of recall@k over
    these vectors can differ, i.e. the share of queries with a near-tie at their first hit.

    image_vectors: (n_images, d) float32 unit; text_vectors: (n_texts, d) float32 unit, one per
    caption; text_to_image: (n_texts,) int64 owner of each caption.
    """
    dim = image_vectors.shape[1]
    similarity = text_vectors.astype(np.float64) @ image_vectors.astype(np.float64).T
    positive = caption_owners(text_to_image, len(image_vectors))  # (n_texts, n_images)
    return (float(near_tie_queries(similarity, positive, dim).mean()),
            float(near_tie_queries(similarity.T, positive.T, dim).mean()))


def caption_owners(text_to_image: np.ndarray, n_images: int) -> np.ndarray:
    """(n_texts, n_images) bool: True where the image is the caption's own."""
    positive = np.zeros((len(text_to_image), n_images), dtype=bool)
    positive[np.arange(len(text_to_image)), text_to_image] = True
    return positive


MODEL_NOISE = 1e-4
"""How far one entry of a unit embedding may move between two correct float32 forward passes of
the same input (another batch size or CPU picks other kernels: ~1e-6 seen here), against ~1e-2
for a real fault such as other preprocessing or another image."""


def assert_same_embeddings(got: np.ndarray, expected: np.ndarray) -> None:
    """Two (n, d) float32 unit embeddings of the same inputs, equal up to `MODEL_NOISE`."""
    np.testing.assert_allclose(got, expected, rtol=0, atol=MODEL_NOISE)


STORED_ROUNDING = 2.0**-12
"""How far one entry of a unit embedding moves when the catalog stores it: float16 keeps 11
significant bits, so a value in [-1, 1] is rounded by at most half a unit in its last place,
2^-12 (2.4e-4) for values in [0.5, 1), less below (`searchengine.catalog.vectors.as_stored`)."""


def stored_score_noise(dim: int) -> float:
    """How far a score involving stored (float16-rounded) unit vectors may differ from the same
    score of the float32 vectors, e.g. a stored image's score with itself from 1: each rounded
    vector moves by at most u = 2^-11 of its norm (float16's unit roundoff), so by Cauchy-Schwarz
    the inner product moves by at most 2u + u^2 (9.8e-4), plus the float32 `score_noise`."""
    u = 2.0**-11
    return 2 * u + u * u + score_noise(dim)


def assert_same_stored_embeddings(got: np.ndarray, expected: np.ndarray) -> None:
    """Embeddings read back from the catalog (`got`) against a forward pass of the same inputs
    (`expected`, float32): equal up to `MODEL_NOISE` plus the storage's `STORED_ROUNDING`."""
    np.testing.assert_allclose(got, expected, rtol=0, atol=MODEL_NOISE + STORED_ROUNDING)


def assert_recall_close(got: dict, expected: dict, slack: float) -> None:
    """Recall@k figures {k: value} of two correct computations: equal keys, values within the
    near-tie share `slack` (0 when no query has a near-tie: then they must be equal, up to the
    float32 rounding of a figure, EPS32, far below the 1/queries step of a real difference)."""
    assert got.keys() == expected.keys()
    for k in expected:
        assert abs(got[k] - expected[k]) <= slack + EPS32, (k, got[k], expected[k], slack)
