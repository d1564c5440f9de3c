"""Image queries as vectors: a stored vector when the catalog has one, else the model's.

`Engine.image_vector` routes a query by its kind (`query.inputs.ImageQuery`) to one of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from searchengine.catalog import Catalog
from searchengine.catalog.records import ModelRow
from searchengine.errors import ImageDecodeError, InvalidInputError
from searchengine.paths import catalog_path

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from searchengine.encoder import Encoder


def stored_vector(catalog: Catalog, model: ModelRow, media_id: int) -> tuple[np.ndarray, str]:
    """The (1, d) float32 vector `model` stored for the catalogued image `media_id`, and its
    path; InvalidInputError when there is none."""
    ids, vectors = catalog.vectors("image", model.id, ids=[media_id])
    media = catalog.media([media_id])
    if not len(ids) or media_id not in media:
        raise InvalidInputError(f"no indexed image with id {media_id} for model {model.spec}")
    return vectors, media[media_id].path


def unchanged_file_vector(
    catalog: Catalog, model: ModelRow | None, path: Path
) -> np.ndarray | None:
    """The (1, d) float32 vector `model` stored for `path`, when the file is catalogued and its
    size and modification time are those it was indexed with; None otherwise."""
    row = catalog.media_by_path(catalog_path(path))
    if row is None or model is None:
        return None
    stat = path.stat()
    if (row.size, row.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        return None
    ids, vectors = catalog.vectors("image", model.id, ids=[row.id])
    return vectors if len(ids) else None


def embed_pil(encoder: Encoder, image: PILImage) -> np.ndarray:
    """(1, d) float32 unit vector of a PIL image: the one place a query image becomes the
    model's pixels, every intermediate bounded (`Encoder.pixels`)."""
    try:
        pixels = encoder.pixels(image.convert("RGB"))  # (3, H, W)
    except ImageDecodeError as error:  # e.g. too elongated for a squash or padding model
        raise InvalidInputError(f"this image cannot be embedded: {error}") from error
    return encoder.encode_images(pixels.unsqueeze(0))
