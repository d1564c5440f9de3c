"""Vectors with the structure of real CLIP embeddings, at any size, streamed in batches.

Uniform random unit vectors have no neighbours to find (every point is about equally far from
every other), so they say nothing of the recall an approximate index reaches on real photos. This
module fits a generator to real stored embeddings and draws as many vectors as asked from it:

1. Real embeddings: the 1,000 flickr8k-1k photos and their 5,000 captions, embedded by a trained
   model (the bundled `demo` model by default, 128-d; any `--model` works).
2. Fit: k-means (FAISS) on the photo vectors; for each cluster its weight, centre, and the top
   principal directions and spreads of its residuals plus an isotropic floor for the rest.
3. Draw: a cluster by weight, then centre + residual drawn from that cluster's fitted Gaussian,
   normalised. Batches are drawn from seeds derived from (seed, batch number), so a collection
   of any size is read twice (training sample, then adding) without ever being held whole.
4. Width: when the model is narrower than the target (128 -> 512), vectors are mapped into the
   wider space by a fixed random isometry (orthonormal columns), which preserves every inner
   product and so every neighbour relation and recall figure.

Queries are the real caption vectors (cross-modal, as text search is), mapped the same way.
`structure_report` compares real and generated vectors at the same size by relative contrast
(mean similarity gap between the nearest neighbour and an average point), a standard measure of
how hard nearest-neighbour search is on a data set.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "searchengine-bench"


@dataclass(frozen=True)
class RealEmbeddings:
    """Real vectors of one model: photos (n, d) and captions (m, d), float32 unit rows."""

    model: str
    images: np.ndarray
    captions: np.ndarray


def real_embeddings(data: Path, model: str = "demo") -> RealEmbeddings:
    """The flickr8k-1k photos and captions embedded by `model`, cached under ~/.cache."""
    key = hashlib.sha1(f"{data.resolve()}|{model}".encode()).hexdigest()[:12]
    cache = CACHE / f"real-{key}.npz"
    if cache.exists():
        stored = np.load(cache)
        return RealEmbeddings(model, stored["images"], stored["captions"])
    from PIL import Image

    from searchengine.encoder import Encoder

    encoder = Encoder.load(model)
    names, captions = [], []
    with open(data / "captions.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            names.append(row["image"])
            captions.append(row["caption"])
    photos = sorted(set(names))
    image_vectors = []
    for start in range(0, len(photos), 32):
        import torch

        pixels = torch.stack(
            [
                encoder.pixels(Image.open(data / "images" / name).convert("RGB"))
                for name in photos[start : start + 32]
            ]
        )
        image_vectors.append(encoder.encode_images(pixels))
    text_vectors = [
        encoder.encode_texts(captions[start : start + 256])
        for start in range(0, len(captions), 256)
    ]
    real = RealEmbeddings(model, np.concatenate(image_vectors), np.concatenate(text_vectors))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, images=real.images, captions=real.captions)
    return real


@dataclass(frozen=True)
class ClipLike:
    """A Gaussian mixture fitted to real photo vectors, drawn from in batches (see module doc)."""

    weights: np.ndarray  # (K,) float64, sums to 1
    centres: np.ndarray  # (K, d) float32
    directions: np.ndarray  # (K, r, d) float32: top principal directions of residuals
    spreads: np.ndarray  # (K, r) float32: their standard deviations
    floor: np.ndarray  # (K,) float32: isotropic std of what the directions leave
    lift: np.ndarray | None  # (d, D) float32 orthonormal rows -> target width, or None
    seed: int = 0

    @property
    def dim(self) -> int:
        return self.centres.shape[1] if self.lift is None else self.lift.shape[1]

    @classmethod
    def fit(
        cls, vectors: np.ndarray, *, clusters: int = 16, rank: int = 8, dim: int = 512,
        seed: int = 0,
    ) -> ClipLike:
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = x.shape
        clusters = max(1, min(clusters, n // 20))
        kmeans = faiss.Kmeans(
            d, clusters, niter=25, seed=seed, spherical=True, verbose=False,
            min_points_per_centroid=1,
        )
        kmeans.train(x)
        assign = kmeans.index.search(x, 1)[1][:, 0]
        weights = np.bincount(assign, minlength=clusters).astype(np.float64)
        centres = np.zeros((clusters, d), dtype=np.float32)
        directions = np.zeros((clusters, rank, d), dtype=np.float32)
        spreads = np.zeros((clusters, rank), dtype=np.float32)
        floor = np.zeros(clusters, dtype=np.float32)
        for k in range(clusters):
            members = x[assign == k]
            if len(members) == 0:
                continue
            centres[k] = members.mean(axis=0)
            residual = members - centres[k]
            _, s, vt = np.linalg.svd(residual.astype(np.float64), full_matrices=False)
            variance = s**2 / max(len(members) - 1, 1)
            r = min(rank, len(variance))
            directions[k, :r] = vt[:r]
            spreads[k, :r] = np.sqrt(variance[:r])
            rest = variance[r:].sum() / max(d - r, 1)
            floor[k] = np.sqrt(rest)
        # a small cluster has fewer residual directions than `rank`: give it the typical floor
        # instead of none, so no cluster collapses onto a low-dimensional sheet
        floor = np.maximum(floor, np.median(floor[floor > 0]) if (floor > 0).any() else 0)
        lift = None
        if dim > d:
            rng = np.random.default_rng(seed + 1)
            q, _ = np.linalg.qr(rng.standard_normal((dim, d)))  # (D, d) orthonormal columns
            lift = np.ascontiguousarray(q.T, dtype=np.float32)  # (d, D)
        return cls(weights / weights.sum(), centres, directions, spreads, floor, lift, seed)

    def lifted(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) real vectors mapped to the target width (an isometry), float32."""
        x = np.asarray(vectors, dtype=np.float32)
        return x if self.lift is None else np.ascontiguousarray(x @ self.lift)

    def batch(self, number: int, size: int) -> np.ndarray:
        """(size, D) float32 unit vectors: batch `number` of the collection (deterministic)."""
        rng = np.random.default_rng([self.seed, number])
        k = rng.choice(len(self.weights), size=size, p=self.weights)
        r, d = self.directions.shape[1], self.centres.shape[1]
        z = rng.standard_normal((size, r)).astype(np.float32) * self.spreads[k]
        x = self.centres[k] + np.einsum("nr,nrd->nd", z, self.directions[k])
        x += rng.standard_normal((size, d)).astype(np.float32) * self.floor[k, None]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return self.lifted(x)

    def batches(self, count: int, size: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """((b,) int64 ids 0..count-1, (b, D) float32 vectors), `size` at a time."""
        for number, start in enumerate(range(0, count, size)):
            b = min(size, count - start)
            yield np.arange(start, start + b, dtype=np.int64), self.batch(number, size)[:b]


def exact_top_k(
    queries: np.ndarray, batches: Iterator[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product of (m, D) `queries` over streamed batches: (m, k) scores, ids.

    Scores are computed in float32 by BLAS, then the merge keeps the k best; ties within float
    noise may order differently from an index, which recall@10 over sets tolerates."""
    m = len(queries)
    best_d = np.full((m, k), -np.inf, dtype=np.float32)
    best_i = np.full((m, k), -1, dtype=np.int64)
    for ids, vectors in batches:
        scores = queries @ vectors.T  # (m, b)
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        d = np.concatenate([best_d, np.take_along_axis(scores, top, axis=1)], axis=1)
        i = np.concatenate([best_i, ids[top]], axis=1)
        order = np.argsort(-d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
    return best_d, best_i


def relative_contrast(vectors: np.ndarray, queries: np.ndarray) -> float:
    """Mean over queries of (mean distance / nearest-neighbour distance) (He et al. 2012), with
    distance^2 = 2 - 2 * similarity for unit vectors. Higher is easier; uniform random vectors in
    many dimensions score about 1 (no neighbour stands out)."""
    sims = queries @ vectors.T
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims, 1e-12))
    return float(np.mean(dist.mean(axis=1) / dist.min(axis=1)))


def structure_report(gen: ClipLike, real: RealEmbeddings) -> dict:
    """Relative contrast of caption queries against real photos, generated photos of the same
    count, and uniform random vectors of the same count (all at the target width)."""
    n = len(real.images)
    queries = gen.lifted(real.captions[:500])
    generated = gen.batch(10**6, n)
    rng = np.random.default_rng(0)
    uniform = rng.standard_normal((n, gen.dim)).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    return {
        "vectors": n,
        "relative_contrast_real": round(relative_contrast(gen.lifted(real.images), queries), 4),
        "relative_contrast_generated": round(relative_contrast(generated, queries), 4),
        "relative_contrast_uniform": round(relative_contrast(uniform, queries), 4),
    }
