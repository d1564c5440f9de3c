"""Decode: file bytes -> an upright RGB PIL image and its metadata, or a reason it is not one.

The first stage of the pipeline. Everything here is Pillow (and libjpeg-turbo through
`simplejpeg` for reduced JPEG decodes), runs in DataLoader worker processes, and never raises
anything but `ImageDecodeError` for a bad file.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import simplejpeg
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from searchengine.errors import ImageDecodeError
from searchengine.exif import read_capture

_ORIENTATION = 0x0112
# Formats we accept after sniffing the content (the file name is never trusted).
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "HEIF", "AVIF"})
# Largest decompressed PNG metadata chunk (iCCP colour profile, zTXt/iTXt text) read while
# decoding; Pillow's own limit (1 MB) skips valid photos whose ICC profile is larger.
MAX_METADATA_CHUNK = 16 * 1024 * 1024
MAX_ASPECT_RATIO = 100
"""The most elongated picture (long side / short side) a model transform is given whole
(`fit_for_model`): beyond it a shortest-side resize and centre crop gets only the centre square,
cut out before it is scaled, and any other transform skips the file (a squashed 100:1 strip
shows nothing recognisable)."""


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
    # the rest of the capture metadata (`searchengine.exif`); `extended` says it was read (a
    # row imported from another tool's export has only the fields above)
    taken_offset: str | None = None
    make: str | None = None
    lens: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    extended: bool = False


def load_image(
    source: Path | bytes,
    *,
    target_size: int | None = None,
    crop: bool = False,
    max_pixels: int = 200_000_000,
) -> tuple[Image.Image, ImageInfo]:
    """Decode `source` (a path or the file's bytes) into an upright RGB image.

    With `target_size`, a JPEG at least twice that size on its short side is decoded by libjpeg at
    a reduced DCT scale (`_reduced_jpeg`) and resized to the size a shortest-side resize to
    `target_size` gives the full image: the model's preprocessing then sees nearly the same
    pixels at a fraction of the cost (the bound is tested in tests/test_images.py). With `crop`
    as well, that resize yields only the centred `target_size` square a centre crop would keep,
    for models whose preprocessing is exactly that resize and crop (`Encoder.draft_crop`); it
    skips a quarter of the resize work on a 4:3 photo. Other images are returned whole either way
    (`fit_for_model` then bounds what the model's transform makes of them).
    Alpha is composited over white. `max_pixels` alone decides what is too large: Pillow's own
    process-wide ceiling (179 MP by default) is raised to it meanwhile (`pillow_limits`).
    Raises `ImageDecodeError` with the reason for any bad file.
    """
    data = _read_bytes(source) if isinstance(source, Path) else source
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with pillow_limits(max_pixels), warnings.catch_warnings():
            # `max_pixels` is checked below, before any pixel is decoded. Pillow's own warning
            # (at a fixed 89 MP) must not skip a 100 MP camera photo that the setting allows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise ImageDecodeError(f"unsupported image format {image.format}")
            if image.width * image.height > max_pixels:
                raise ImageDecodeError(
                    f"{image.width}x{image.height} pixels is over the limit of {max_pixels} "
                    "(possible decompression bomb)"
                )
            info = _read_info(image)
            reduced = _reduced_jpeg(data, image, target_size) if target_size else None
            if reduced is None or target_size is None:  # no draft without a target size
                image.load()
                image = ImageOps.exif_transpose(image)
            else:  # upright first, as the model's preprocessing sees the photo
                image, box = _upright_draft(*reduced, _orientation(image))
                image = _finish_draft(image, box, target_size, crop=crop)
            return _to_rgb(image), info
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (content not recognised)") from None
    except Image.DecompressionBombError as error:  # Pillow's ceiling is at least max_pixels
        raise ImageDecodeError(
            f"over the limit of {max_pixels} pixels (possible decompression bomb): {error}"
        ) from None
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from None


def read_info(data: bytes | Path, *, max_pixels: int = 200_000_000) -> ImageInfo:
    """What the catalog keeps about an image file (its bytes, or its path: then only its header
    is read from the disk), from its header alone (no pixels are decoded): for `import`, whose
    vectors were made elsewhere, and for files whose metadata is read again
    (`ingest.metadata`). Raises `ImageDecodeError` with the reason for a file that is not an
    accepted image."""
    if isinstance(data, bytes) and not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with pillow_limits(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                if image.format not in ACCEPTED_FORMATS:
                    raise ImageDecodeError(f"unsupported image format {image.format}")
                return _read_info(image)
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (content not recognised)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from None


def fit_for_model(image: Image.Image, size: int, *, crop: bool) -> Image.Image:
    """`image`, ready for a model transform with input side `size`, such that no image that
    transform builds holds more than `MAX_ASPECT_RATIO` x `size` x `size` pixels (15 MB at 224),
    whatever the picture's aspect ratio.

    Up to `MAX_ASPECT_RATIO`:1, `image` is returned as it is: the transform's own intermediate
    stays within that bound and its tensor is open_clip's own, exactly. A more elongated picture
    would cost a shortest-side resize of its whole length first (a 200000x1 strip: 38 GB at
    224 px), so:

    - with `crop` (the transform is a bicubic shortest-side resize to `size`, then a centre crop
      of that square: `Encoder.draft_crop`) only the centred square the crop keeps is resized,
      from the source pixels and at the resize's own scale (`_finish_draft` over the whole
      picture). The transform then has nothing left to resize or crop; the pixels differ from
      the reference's only by the rounding of Pillow's two 8-bit passes, which it may run in the
      other order for the smaller output (bound tested in tests/test_image_bounds.py);
    - without `crop` (a squash, a longest-side resize with padding, or a transform this module
      does not know: they need the whole picture) it raises `ImageDecodeError`.
    """
    width, height = image.size
    if max(width, height) <= MAX_ASPECT_RATIO * min(width, height):
        return image
    if crop:
        return _finish_draft(image, (0, 0, width, height), size, crop=True)
    raise ImageDecodeError(
        f"{width}x{height} pixels is more elongated than {MAX_ASPECT_RATIO}:1, which this "
        "model's preprocessing (it scales the whole picture) cannot take"
    )


class _PillowLimits:
    """Pillow's process-wide limits, raised while any `load_image` call runs and put back after
    the last one ends, so that outside our decoding they are whatever the program set.

    `Image.MAX_IMAGE_PIXELS`: Pillow refuses images over twice this (178,956,970 pixels by
    default) on its own, in `Image.open` and while loading GIF frames, TIFF tiles, WebP and MPO,
    before `max_pixels` is checked. It is raised to half the largest `max_pixels` in use, so that
    `max_pixels` alone decides (`load_image` checks it from the header). Another thread's
    Pillow calls see the raised value while a decode runs; never a lower one.

    `PngImagePlugin.MAX_TEXT_CHUNK` (1 MB): raised to `MAX_METADATA_CHUNK`, so that a PNG with a
    2 MB ICC profile decodes; a larger chunk is still refused, and `MAX_TEXT_MEMORY` (64 MB by
    default, never lowered) still bounds all text chunks of a file together.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[int] = []  # max_pixels of every call in progress
        self._saved: tuple[int | None, int, int] = (None, 0, 0)

    @contextmanager
    def scope(self, max_pixels: int) -> Iterator[None]:
        with self._lock:
            if not self._active:
                self._saved = (
                    Image.MAX_IMAGE_PIXELS,
                    PngImagePlugin.MAX_TEXT_CHUNK,
                    PngImagePlugin.MAX_TEXT_MEMORY,
                )
            self._active.append(max_pixels)
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._active.remove(max_pixels)
                if self._active:
                    self._apply()
                else:
                    pixels, chunk, memory = self._saved
                    Image.MAX_IMAGE_PIXELS = pixels
                    PngImagePlugin.MAX_TEXT_CHUNK = chunk
                    PngImagePlugin.MAX_TEXT_MEMORY = memory

    def _apply(self) -> None:
        pixels, chunk, memory = self._saved
        if pixels is not None:  # None: the program turned Pillow's check off; keep it off
            Image.MAX_IMAGE_PIXELS = max(pixels, -(-max(self._active) // 2))
        PngImagePlugin.MAX_TEXT_CHUNK = max(chunk, MAX_METADATA_CHUNK)
        PngImagePlugin.MAX_TEXT_MEMORY = max(memory, MAX_METADATA_CHUNK)


_PILLOW_LIMITS = _PillowLimits()


def pillow_limits(max_pixels: int) -> AbstractContextManager[None]:
    """A context in which Pillow opens and decodes any image of up to `max_pixels` pixels and
    PNG metadata chunks (ICC profiles) of up to `MAX_METADATA_CHUNK` bytes (`_PillowLimits`).
    For code that opens images itself before `load_image` (the server's upload check)."""
    return _PILLOW_LIMITS.scope(max_pixels)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("file vanished before it could be read") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a folder, not a file") from None
    except OSError as error:
        raise ImageDecodeError(f"unreadable: {error.strerror or error}") from None


def _reduced_jpeg(
    data: bytes, image: Image.Image, target_size: int
) -> tuple[Image.Image, tuple[float, float, float, float]] | None:
    """A JPEG decoded by libjpeg at 1/2, 1/4 or 1/8 scale, never below `target_size` on its
    short side, with the box of the full picture in the reduced image's pixels; None for an
    image that is not a JPEG or not at least twice `target_size` on its short side.

    The scale is the one Pillow's `Image.draft` picks (the largest that keeps both sides at or
    above a shortest-side resize to `target_size`). YCbCr and greyscale JPEGs are then decoded
    by libjpeg-turbo through `simplejpeg`, from memory in one call: the same pixels as Pillow's
    draft (tested) in 27.5 ms instead of 29.4 ms for a 12-megapixel JPEG here, as Pillow feeds
    libjpeg 64 KB at a time. Other JPEGs (CMYK, YCCK) and any file libjpeg warns about go
    through `Image.draft` itself.
    """
    width, height = image.size
    if image.format != "JPEG" or min(width, height) < 2 * target_size:
        return None
    ratio = target_size / min(width, height)
    request = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    most = min(width // request[0], height // request[1])
    scale = next(s for s in (8, 4, 2, 1) if s <= most)  # as Image.draft chooses it
    reduced = (-(-width // scale), -(-height // scale))  # libjpeg rounds up
    pixels = _fast_reduced_decode(data, image.mode, reduced)
    if pixels is not None and pixels.shape[1::-1] == reduced:
        box = (0, 0, width / scale, height / scale)
        return Image.fromarray(pixels[..., 0] if image.mode == "L" else pixels), box
    drafted = image.draft("RGB", request)  # Pillow decides, as for every other file
    if drafted is None:
        return None
    image.load()
    return image, drafted[1]


def _fast_reduced_decode(data: bytes, mode: str, request: tuple[int, int]):
    """(h, w, channels) uint8 pixels of a YCbCr or greyscale JPEG from libjpeg-turbo, at the
    smallest k/8 scale giving at least `request` (width, height); None where Pillow must decide.

    libjpeg warnings are errors here (`strict`), and the file then goes to Pillow, which
    decodes a merely untidy JPEG (extra bytes before a marker) and refuses a truncated one: the
    fast path never changes which files are skipped, nor why.
    """
    if mode not in ("RGB", "L"):  # CMYK and YCCK keep Pillow's colour handling
        return None
    try:
        return simplejpeg.decode_jpeg(
            data,
            colorspace="RGB" if mode == "RGB" else "GRAY",
            min_width=request[0],
            min_height=request[1],
            strict=True,
        )
    except ValueError:
        return None


# EXIF orientation -> the transposition that makes the picture upright (as ImageOps.exif_transpose
# picks it), and where a point (x, y) of a width x height picture lands under it.
_UPRIGHT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, lambda x, y, w, h: (w - x, y)),
    3: (Image.Transpose.ROTATE_180, lambda x, y, w, h: (w - x, h - y)),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, lambda x, y, w, h: (x, h - y)),
    5: (Image.Transpose.TRANSPOSE, lambda x, y, w, h: (y, x)),
    6: (Image.Transpose.ROTATE_270, lambda x, y, w, h: (h - y, x)),  # clockwise
    7: (Image.Transpose.TRANSVERSE, lambda x, y, w, h: (h - y, w - x)),
    8: (Image.Transpose.ROTATE_90, lambda x, y, w, h: (y, w - x)),  # counter-clockwise
}


def _upright_draft(
    image: Image.Image, box: tuple[float, float, float, float], orientation: int
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Apply the EXIF `orientation` to a drafted image and carry `box` (the full picture) along.

    The result keeps no EXIF block, so nothing downstream can turn it a second time.
    """
    image.info.pop("exif", None)
    if orientation not in _UPRIGHT:
        return image, box
    method, moved = _UPRIGHT[orientation]
    (x0, y0), (x1, y1) = (moved(x, y, *image.size) for x, y in (box[:2], box[2:]))
    return image.transpose(method), (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _finish_draft(
    image: Image.Image, box: tuple[float, float, float, float], target_size: int, *, crop: bool
) -> Image.Image:
    """Resize a drafted image to the size open_clip's shortest-side Resize gives the full one.

    A reduced decode rounds odd sides up (333 px at 1/2 is 167, not 166.5), which changes the
    aspect ratio; the model's resize would then truncate the long side one pixel short and the
    centre crop would cover a shifted, rescaled region. Resizing `box` (the full picture, in
    reduced pixels) straight to the reference size keeps the geometry; the model's own resize
    then has nothing left to do.

    With `crop`, only the `target_size` square that torchvision's CenterCrop keeps (whole-pixel
    offsets, rounded as it rounds them) is resized, at the same scale: each output pixel samples
    the same source position with the same filter as before, so the pixels are those of the
    uncropped resize (tested), minus the work on the columns or rows the crop drops.
    """
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    if width <= height:
        size = (target_size, int(target_size * height / width))
    else:
        size = (int(target_size * width / height), target_size)
    if not crop:
        return image.resize(size, Image.Resampling.BICUBIC, box=box)
    scale_x, scale_y = width / size[0], height / size[1]  # reduced pixels per output pixel
    dx = int(round((size[0] - target_size) / 2.0))
    dy = int(round((size[1] - target_size) / 2.0))
    square = (
        left + dx * scale_x,
        top + dy * scale_y,
        left + (dx + target_size) * scale_x,
        top + (dy + target_size) * scale_y,
    )
    return image.resize((target_size, target_size), Image.Resampling.BICUBIC, box=square)


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


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, as stored)."""
    return image.getexif().get(_ORIENTATION, 1)


def _read_info(image: Image.Image) -> ImageInfo:
    exif = image.getexif()  # a PNG's may follow its pixels: a corrupt one fails here, as it must
    width, height = image.size
    if exif.get(_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    capture = read_capture(exif)
    return ImageInfo(
        width=width,
        height=height,
        format=image.format or "unknown",
        taken_at=capture.taken_at,
        camera=capture.model,
        taken_offset=capture.taken_offset,
        make=capture.make,
        lens=capture.lens,
        latitude=capture.latitude,
        longitude=capture.longitude,
        extended=True,
    )
