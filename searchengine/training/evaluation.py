"""Validation while training: retrieval recall both ways and the diagonal gap of a batch."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from searchengine.eval.metrics import RetrievalMetrics, retrieval_metrics
from searchengine.text_tower import encode_text
from searchengine.training.pairs import PairSet

if TYPE_CHECKING:
    import torch

GAP_BATCH = 32
"""Images (each with its first caption) in the similarity matrix of the diagonal gap and heatmap."""


@dataclass(frozen=True)
class ValidationSet:
    """Validation pairs made ready once: pixels of each distinct image and tokens of each caption.

    pixels: (n_images, 3, H, W) float16 (preprocessed; float16 is exact to well below one 8-bit
    level); tokens: (n_texts, L) int64; text_to_image: (n_texts,) int64; first_caption:
    (n_images,) int64, the index of each image's first caption.
    """

    pixels: torch.Tensor
    tokens: torch.Tensor
    text_to_image: np.ndarray
    first_caption: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    """One validation pass. `similarity`: (g, g) float32 cosines of the gap batch (image rows)."""

    step: int
    metrics: RetrievalMetrics
    diagonal_gap: float
    similarity: np.ndarray

    @property
    def recall_mean(self) -> float:
        """Mean of recall@k over both directions and all k: the number best.pt is chosen on."""
        metrics = self.metrics
        values = list(metrics.text_to_image.values()) + list(metrics.image_to_text.values())
        return float(np.mean(values))

    def as_record(self) -> dict:
        return {
            "step": self.step,
            "recall_mean": self.recall_mean,
            "diagonal_gap": self.diagonal_gap,
            **self.metrics.as_dict(),
        }


def prepare_validation(
    pairs: PairSet, load_pixels: Callable[[list], torch.Tensor], tokenizer: Callable, *,
    max_pairs: int,
) -> ValidationSet:
    """Decode and tokenise the validation pairs once (at most `max_pairs` captions, whole images).

    `load_pixels` maps a list of `Pair`s to (n, 3, H, W) float pixels (a failed decode drops the
    image and its captions, as in training).
    """
    import torch

    per_image = Counter(pair.image_key for pair in pairs.pairs)
    keys: list[str] = []
    count = 0
    for key in pairs.image_keys:  # whole images, until the caption budget is spent
        if keys and count + per_image[key] > max_pairs:
            break
        keys.append(key)
        count += per_image[key]
    subset = pairs.select_images(keys)
    pixels, kept = load_pixels(subset.images())
    subset = subset.select_images(kept)
    text_to_image = subset.text_to_image()
    first_caption = np.array([int(np.argmax(text_to_image == i)) for i in range(len(kept))])
    return ValidationSet(
        pixels=pixels.to(torch.float16),
        tokens=tokenizer([pair.caption for pair in subset.pairs]),
        text_to_image=text_to_image,
        first_caption=first_caption.astype(np.int64),
    )


def evaluate(
    model: Any, validation: ValidationSet, step: int, *,
    device: str, batch_size: int = 256,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Evaluation:
    """Recall@1/5/10 both ways (standard protocol) and the diagonal gap, in eval mode.

    `model` is an open_clip CLIP model (a torch.nn.Module; open_clip ships no types).
    The model is put back in train mode afterwards.
    """
    import torch

    was_training = model.training
    model.eval()
    images, texts = [], []
    with torch.inference_mode(), autocast():
        for start in range(0, len(validation.pixels), batch_size):
            batch = validation.pixels[start:start + batch_size].to(device, torch.float32)
            images.append(model.encode_image(batch, normalize=True).float().cpu())
        for start in range(0, len(validation.tokens), batch_size):
            batch = validation.tokens[start:start + batch_size].to(device)
            texts.append(encode_text(model, batch).float().cpu())
    model.train(was_training)
    image_embeddings = torch.cat(images).numpy()  # (n_images, D) float32 unit
    text_embeddings = torch.cat(texts).numpy()  # (n_texts, D) float32 unit
    metrics = retrieval_metrics(image_embeddings, text_embeddings, validation.text_to_image)
    similarity, gap = diagonal_gap(image_embeddings, text_embeddings[validation.first_caption])
    return Evaluation(step=step, metrics=metrics, diagonal_gap=gap, similarity=similarity)


def diagonal_gap(
    image_embeddings: np.ndarray, text_embeddings: np.ndarray, size: int = GAP_BATCH
) -> tuple[np.ndarray, float]:
    """Similarity matrix of the first `size` matching pairs, and mean diagonal minus off-diagonal.

    image_embeddings, text_embeddings: (n, D) float32 unit, row i of both a matching pair.
    Returns ((g, g) float32 cosines, gap) with g = min(size, n); the gap is 0 when g < 2.
    """
    g = min(size, len(image_embeddings))
    similarity = (image_embeddings[:g] @ text_embeddings[:g].T).astype(np.float32)
    if g < 2:
        return similarity, 0.0
    diagonal = np.trace(similarity) / g
    off_diagonal = (similarity.sum() - np.trace(similarity)) / (g * g - g)
    return similarity, float(diagonal - off_diagonal)
