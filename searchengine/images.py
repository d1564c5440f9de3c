"""Decode: file bytes -> an upright RGB PIL image and its metadata, or a reason it is not one.

The first stage of the pipeline. Everything here is plain Pillow, runs in DataLoader worker
processes, and never raises anything but `ImageDecodeError` for a bad file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from searchengine.errors import ImageDecodeError

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME = 306
_MODEL = 0x0110
# Formats we accept after sniffing the content (the file name is never trusted).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "HEIF", "AVIF"})


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_SUPPORTED = _register_heif()


@dataclass(frozen=True)
class ImageInfo:
    """What the catalog keeps about a decoded image. Width and height are after EXIF rotation."""

    width: int
    height: int
    format: str
    taken_at: datetime | None
    camera: str | None


def load_image(
    source: Path | bytes, *, target_size: int | None = None, max_pixels: int = 200_000_000
) -> tuple[Image.Image, ImageInfo]:
    """Decode `source` (a path or the file's bytes) into an upright RGB image.

    With `target_size`, a JPEG at least twice that size on its short side is decoded at a reduced
    DCT scale (`Image.draft`) and resized to the size a shortest-side resize to `target_size`
    gives the full image: the model's preprocessing then sees nearly the same pixels at a
    fraction of the cost (the bound is tested in tests/test_images.py).
    Alpha is composited over white. Raises `ImageDecodeError` with the reason for any bad file.
    """
    data = _read_bytes(source) if isinstance(source, Path) else source
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # `max_pixels` is checked below, before any pixel is decoded. Pillow's own warning
            # (at a fixed 89 MP) must not skip a 100 MP camera photo that the setting allows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageDecodeError(f"unsupported image format {image.format}")
            if image.width * image.height > max_pixels:
                raise ImageDecodeError(
                    f"{image.width}x{image.height} pixels is over the limit of {max_pixels} "
                    "(possible decompression bomb)"
                )
            info = _read_info(image)
            box = _draft(image, target_size) if target_size and image.format == "JPEG" else None
            image.load()
            if box is not None:
                image = _finish_draft(image, box, target_size)
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image), info
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (content not recognised)") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"possible decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("file vanished before it could be read") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a folder, not a file") from None
    except OSError as error:
        raise ImageDecodeError(f"unreadable: {error.strerror or error}") from None


def _draft(image: Image.Image, target_size: int) -> tuple[float, float, float, float] | None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale, keeping the short side >= `target_size`.

    Pillow picks the largest reduction that keeps both sides >= the requested size, so asking for
    the image scaled to a short side of `target_size` never starves the resize that follows.
    Returns the box of the full picture in the reduced image's pixels, or None (no draft).
    """
    short = min(image.size)
    if short < 2 * target_size:
        return None
    scale = target_size / short
    drafted = image.draft(
        "RGB", (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    )
    return drafted[1] if drafted else None


def _finish_draft(
    image: Image.Image, box: tuple[float, float, float, float], target_size: int
) -> Image.Image:
    """Resize a drafted image to the size open_clip's shortest-side Resize gives the full one.

    A reduced decode rounds odd sides up (333 px at 1/2 is 167, not 166.5), which changes the
    aspect ratio; the model's resize would then truncate the long side one pixel short and the
    centre crop would cover a shifted, rescaled region. Resizing `box` (the full picture, in
    reduced pixels) straight to the reference size keeps the geometry; the model's own resize
    then has nothing left to do.
    """
    width, height = box[2], box[3]
    if width <= height:
        size = (target_size, int(target_size * height / width))
    else:
        size = (int(target_size * width / height), target_size)
    return image.resize(size, Image.Resampling.BICUBIC, box=box)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency over white and convert any mode to RGB."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode.startswith("I;16"):
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB") if image.mode != "RGB" else image


def _read_info(image: Image.Image) -> ImageInfo:
    exif = image.getexif()
    orientation = exif.get(0x0112, 1)
    width, height = image.size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    sub = exif.get_ifd(_EXIF_IFD)
    taken = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    camera = exif.get(_MODEL)
    return ImageInfo(
        width=width,
        height=height,
        format=image.format or "unknown",
        taken_at=_parse_exif_time(taken),
        camera=(str(camera).strip("\x00 ").strip() or None) if camera else None,
    )


def _parse_exif_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value.strip("\x00 ").strip(), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
