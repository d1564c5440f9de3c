"""Image queries: what the Engine takes where an image is expected, and the checks on each kind.

`Engine.image_vector` routes a query by its type: a path (str or Path; a digit string is a path,
never a catalog id), a catalog id (int), a PIL image, the bytes of an image file, or a vector.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from searchengine.errors import ImageDecodeError, InvalidInputError
from searchengine.images import load_image

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageQuery = Union[str, os.PathLike, int, bytes, "PILImage", np.ndarray]
"""A path, a catalog id, a PIL image, the bytes of an image file, or a (d,) / (1, d) float
vector."""

MAX_ID = 2**63 - 1  # catalog ids are SQLite INTEGERs (64-bit signed)


def unit_query_vector(vector: np.ndarray, dim: int, model_id: str) -> np.ndarray:
    """A caller's (d,) or (1, d) float vector as a (1, d) float32 unit row; InvalidInputError for
    another shape or dtype, a non-finite value or the zero vector."""
    if not np.issubdtype(vector.dtype, np.floating) or vector.shape not in ((dim,), (1, dim)):
        raise InvalidInputError(
            f"a query vector is a ({dim},) or (1, {dim}) float array for model {model_id}; "
            f"got {vector.shape} {vector.dtype}"
        )
    vector = vector.astype(np.float32).reshape(1, dim)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise InvalidInputError("a query vector must be finite and not all zeros")
    return vector / norm


def decode_query_image(source: Path | bytes) -> PILImage:
    """An image file or its bytes as an upright RGB PIL image; InvalidInputError when it is not
    a usable image."""
    try:
        image, _ = load_image(source)
    except ImageDecodeError as error:
        where = source if isinstance(source, Path) else "the image bytes"
        raise InvalidInputError(f"{where}: {error}") from error
    return image


def check_query_path(image: str | os.PathLike) -> Path:
    """The path of an existing file; a clear error otherwise (naming the id form for digits)."""
    path = Path(image).expanduser()
    if path.is_file():
        return path
    given = os.fspath(image)
    if path.exists():
        raise InvalidInputError(f"{given} is not a file")
    if given.isdigit():
        raise InvalidInputError(
            f"{given} is not a file, and a digit string is never taken as a catalog id: pass "
            f"the int {given} (on the command line: id:{given})"
        )
    raise InvalidInputError(f"{given} does not exist; give an image file or a catalog id")


def check_media_id(media_id: int) -> int:
    if not 0 < media_id <= MAX_ID:
        raise InvalidInputError(f"no indexed image with id {media_id}; ids are 1 to 2^63-1")
    return media_id
