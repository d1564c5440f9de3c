"""Retrieval metrics with the standard image-caption protocol (as clip_benchmark computes them).

- text -> image: a caption hits at k when its own image is among its top k images.
- image -> text: an image hits at k when any of its captions is among its top k captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from searchengine.errors import InvalidInputError


@dataclass(frozen=True)
class RetrievalMetrics:
    """Recall@k per direction (fractions in [0, 1]) plus mean and median rank (1 = best)."""

    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    text_to_image_mean_rank: float
    text_to_image_median_rank: float
    image_to_text_mean_rank: float
    image_to_text_median_rank: float

    def as_dict(self) -> dict:
        return {
            "text_to_image": {f"R@{k}": v for k, v in self.text_to_image.items()},
            "image_to_text": {f"R@{k}": v for k, v in self.image_to_text.items()},
            "text_to_image_mean_rank": self.text_to_image_mean_rank,
            "text_to_image_median_rank": self.text_to_image_median_rank,
            "image_to_text_mean_rank": self.image_to_text_mean_rank,
            "image_to_text_median_rank": self.image_to_text_median_rank,
        }


def caption_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """Rank (1-based) of each caption's own image.

    similarity: (n_texts, n_images) float scores; text_to_image: (n_texts,) int image index.
    Returns (n_texts,) int64. Ties count against the query (the true image ranks after equals).
    """
    own = similarity[np.arange(len(text_to_image)), text_to_image]  # (n_texts,)
    return (similarity >= own[:, None]).sum(axis=1).astype(np.int64)


def image_ranks(similarity: np.ndarray, text_to_image: np.ndarray) -> np.ndarray:
    """Rank (1-based) of each image's best-placed caption.

    similarity: (n_images, n_texts) float scores; text_to_image: (n_texts,) int image index.
    Returns (n_images,) int64; an image without captions gets rank n_texts + 1 (never a hit).
    """
    n_images, n_texts = similarity.shape
    ranks = np.full(n_images, n_texts + 1, dtype=np.int64)
    order = np.argsort(-similarity, axis=1, kind="stable")  # (n_images, n_texts)
    positive = text_to_image[order] == np.arange(n_images)[:, None]  # (n_images, n_texts) bool
    has_caption = positive.any(axis=1)
    ranks[has_caption] = positive[has_caption].argmax(axis=1) + 1
    return ranks


def retrieval_metrics(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_to_image: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
) -> RetrievalMetrics:
    """Exact recall@k both ways from unit vectors.

    image_embeddings: (n_images, d) float32; text_embeddings: (n_texts, d) float32;
    text_to_image: (n_texts,) int, the image index of each caption.
    """
    text_to_image = np.asarray(text_to_image, dtype=np.int64)
    if len(text_embeddings) != len(text_to_image):
        raise InvalidInputError("text_to_image must give one image index per caption")
    if len(image_embeddings) == 0 or len(text_embeddings) == 0:
        raise InvalidInputError("recall needs at least one image and one caption")
    similarity = text_embeddings @ image_embeddings.T  # (n_texts, n_images)
    return metrics_from_ranks(
        caption_ranks(similarity, text_to_image), image_ranks(similarity.T, text_to_image), ks
    )


def metrics_from_ranks(
    text_ranks: np.ndarray, image_ranks_: np.ndarray, ks: tuple[int, ...]
) -> RetrievalMetrics:
    """Recall@k and mean/median rank from per-query 1-based ranks of the first hit."""
    return RetrievalMetrics(
        text_to_image={k: float((text_ranks <= k).mean()) for k in ks},
        image_to_text={k: float((image_ranks_ <= k).mean()) for k in ks},
        text_to_image_mean_rank=float(text_ranks.mean()),
        text_to_image_median_rank=float(np.median(text_ranks)),
        image_to_text_mean_rank=float(image_ranks_.mean()),
        image_to_text_median_rank=float(np.median(image_ranks_)),
    )
