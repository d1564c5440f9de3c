"""Uploaded images: size and pixel limits, content sniffed (the file name is never trusted)."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from searchengine.errors import ImageDecodeError
from searchengine.images import ACCEPTED_FORMATS, load_image, pillow_limits
from searchengine.server.errors import ApiError

_UNSAFE = re.compile(r"[^\w .,()+-]")
_ACCEPTED = ", ".join(sorted(ACCEPTED_FORMATS))


@dataclass(frozen=True)
class Upload:
    """A checked upload: the decoded upright RGB image (the engine takes it as it is, nothing is
    written to disk or decoded twice), and a display name."""

    name: str
    image: Image.Image


def read_upload(stream: BinaryIO, filename: str | None, *, max_bytes: int,
                max_pixels: int) -> Upload:
    """Read and decode an uploaded image. Raises ApiError: 413 (too many bytes or pixels),
    415 (not an image we accept, whatever its name says), 422 (corrupt or truncated)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, f"upload is over the limit of {max_bytes} bytes")
    if not data:
        raise ApiError(422, "the uploaded file is empty")
    _check_header(data, max_pixels)
    try:
        image, _ = load_image(data, max_pixels=max_pixels)
    except ImageDecodeError as error:
        raise ApiError(422, f"the upload is not a usable image: {error}") from None
    return Upload(display_name(filename), image)


def _check_header(data: bytes, max_pixels: int) -> None:
    """Format and size from the header alone, before any pixel is decoded."""
    try:
        with pillow_limits(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                found, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        raise ApiError(415, "the upload is not an image (content not recognised; the file "
                            f"name is not trusted). Accepted: {_ACCEPTED}") from None
    except Image.DecompressionBombError:
        raise ApiError(413, f"the image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(422, f"the upload is not a usable image: {error}") from None
    if found not in ACCEPTED_FORMATS:
        raise ApiError(415, f"unsupported image format {found}; accepted: {_ACCEPTED}")
    if width * height > max_pixels:
        raise ApiError(413, f"the image is {width}x{height} pixels, over the limit of {max_pixels}")


def display_name(filename: str | None) -> str:
    """A short, harmless label for an upload: the base name, odd characters replaced."""
    base = Path((filename or "").replace("\\", "/")).name.strip()
    return _UNSAFE.sub("_", base)[:100] or "upload"
