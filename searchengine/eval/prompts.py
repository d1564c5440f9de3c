"""Prompt templates for zero-shot classification, and label embeddings built from them.

A label becomes sentences ("a photo of a {label}."), the sentences become unit vectors, and the
vectors of one label's templates are averaged and renormalised (a prompt ensemble, worth a few
points of accuracy over one template). `searchengine classify` and `searchengine bench zero-shot`
use the same lists, so the benchmark measures what the command does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from searchengine.errors import InvalidInputError

SINGLE_TEMPLATE: tuple[str, ...] = ("a photo of a {label}.",)
"""The one-template baseline of the CLIP paper."""

ENSEMBLE_TEMPLATES: tuple[str, ...] = (
    "itap of a {label}.",
    "a bad photo of the {label}.",
    "a origami {label}.",
    "a photo of the large {label}.",
    "a {label} in a video game.",
    "art of the {label}.",
    "a photo of the small {label}.",
)
"""The 7 templates that CLIP's prompt-engineering notebook selected from its 80 ImageNet ones
(open_clip's `SIMPLE_IMAGENET_TEMPLATES`): most of the 80-template gain at a tenth of the cost."""

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": SINGLE_TEMPLATE,
    "ensemble": ENSEMBLE_TEMPLATES,
}
"""Named template lists, as `--templates` offers them."""

_BATCH = 256  # sentences per encoder call: bounds memory for long label lists


class TextEncoder(Protocol):
    """Anything with `encode_texts(list[str]) -> (n, d) float32 unit vectors` (an `Encoder`)."""

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def templates_named(name: str) -> tuple[str, ...]:
    """The template list called `name` (`single` or `ensemble`); unknown names list the choices."""
    if name not in TEMPLATE_SETS:
        raise InvalidInputError(
            f"unknown template set {name!r}; choose one of: {', '.join(TEMPLATE_SETS)}"
        )
    return TEMPLATE_SETS[name]


def label_embeddings(
    encoder: TextEncoder, labels: Sequence[str], templates: Sequence[str] = ENSEMBLE_TEMPLATES
) -> np.ndarray:
    """One unit vector per label: the renormalised mean of its templates' sentence embeddings.

    labels: n_labels non-blank strings; templates: strings with a `{label}` placeholder.
    Returns (n_labels, d) float32, unit length. With one template this is that sentence's vector.
    """
    labels = [label.strip() for label in labels]
    if not labels or any(not label for label in labels):
        raise InvalidInputError("labels must be a non-empty list of non-blank names")
    if not templates or any("{label}" not in template for template in templates):
        raise InvalidInputError(
            "every template needs a {label} placeholder, e.g. 'a photo of a {label}.'"
        )
    sentences = [template.format(label=label) for label in labels for template in templates]
    vectors = np.concatenate(
        [encoder.encode_texts(sentences[i : i + _BATCH]) for i in range(0, len(sentences), _BATCH)]
    )  # (n_labels * n_templates, d), label-major
    mean = vectors.reshape(len(labels), len(templates), -1).mean(axis=1)  # (n_labels, d)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)
