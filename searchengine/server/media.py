"""Catalogued images over HTTP: originals and thumbnails, and nothing else.

A request names a catalog id, never a path. The file served is the catalogued path, resolved and
opened without following a final symbolic link, and its bytes are served only if their content
hash equals the one recorded at indexing time: a file swapped, edited or replaced by a link to
something else after indexing is refused (409), so no path trick can reach another file.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from searchengine.catalog import Catalog
from searchengine.errors import ImageDecodeError
from searchengine.hashing import content_matches
from searchengine.images import ACCEPTED_FORMATS, load_image
from searchengine.paths import catalog_path, display_path
from searchengine.server.errors import ApiError

log = logging.getLogger(__name__)

MEDIA_TYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "BMP": "image/bmp", "GIF": "image/gif", "TIFF": "image/tiff", "HEIF": "image/heif",
    "AVIF": "image/avif",
}


@dataclass(frozen=True)
class ServedImage:
    """Bytes ready to send, their media type (from the content) and an ETag."""

    data: bytes
    media_type: str
    etag: str
    filename: str


@dataclass(frozen=True)
class _CachedThumbnail:
    signature: tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns) of the source
    content_hash: str
    image: ServedImage


class MediaFiles:
    """Originals and thumbnails of catalogued images. Thread-safe; thumbnails cached in memory."""

    def __init__(self, catalog: Catalog, *, cache_bytes: int, max_original_bytes: int):
        self.catalog = catalog
        self.cache_bytes = cache_bytes
        self.max_original_bytes = max_original_bytes
        self._cache: OrderedDict[tuple[int, int], _CachedThumbnail] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def original(self, media_id: int) -> ServedImage:
        """The catalogued file's own bytes, verified against the catalog's content hash."""
        row = self._row(media_id)
        if row.size > self.max_original_bytes:
            raise ApiError(413, f"image {media_id} is {row.size} bytes, over the server's limit "
                                f"of {self.max_original_bytes} for originals; use its thumbnail")
        data, _ = _read_verified(row)
        media_type = MEDIA_TYPES.get(_sniff(data) or "", "application/octet-stream")
        return ServedImage(data, media_type, f'"{row.content_hash}"',
                           display_path(Path(row.path).name))

    def thumbnail(self, media_id: int, size: int) -> ServedImage:
        """A JPEG at most `size` pixels on its long side, upright (EXIF applied), no alpha."""
        row = self._row(media_id)
        key = (media_id, size)
        signature = _signature(Path(row.path))
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached.signature == signature and cached.content_hash == row.content_hash:
                self._cache.move_to_end(key)
                return cached.image
        data, signature = _read_verified(row)
        try:
            image, _ = load_image(data, target_size=size)
        except ImageDecodeError as error:
            raise ApiError(409, f"image {media_id} cannot be decoded any more: {error}") from None
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        served = ServedImage(buffer.getvalue(), "image/jpeg", f'"{row.content_hash}-{size}"',
                             f"{display_path(Path(row.path).stem)}-{size}.jpg")
        self._remember(key, _CachedThumbnail(signature, row.content_hash, served))
        return served

    def _row(self, media_id: int):
        row = self.catalog.media([media_id]).get(media_id)
        if row is None:
            raise ApiError(404, f"no catalogued image with id {media_id}")
        return row

    def _remember(self, key: tuple[int, int], entry: _CachedThumbnail) -> None:
        with self._lock:
            old = self._cache.pop(key, None)
            if old:
                self._cached_bytes -= len(old.image.data)
            self._cache[key] = entry
            self._cached_bytes += len(entry.image.data)
            while self._cached_bytes > self.cache_bytes and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped.image.data)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _read_verified(row) -> tuple[bytes, tuple[int, int, int, int]]:
    """The bytes of a catalogued file, if they are still the ones that were indexed.

    Returns (bytes, (st_dev, st_ino, st_size, st_mtime_ns)). Raises ApiError 404 when the file is
    gone, 409 when it is not the catalogued content any more.
    """
    stored = Path(row.path)
    if not stored.is_absolute() or catalog_path(row.path) != row.path:
        raise ApiError(409, f"catalogued path {row.path!r} is not absolute; re-index its folder")
    try:
        resolved = stored.resolve(strict=True)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        descriptor = os.open(resolved, flags)  # O_NONBLOCK: a FIFO swapped in cannot hang us
    except FileNotFoundError:
        raise ApiError(404, f"{row.path} is no longer on disk; run `searchengine index` on its "
                            "folder to forget it") from None
    except (OSError, RuntimeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise ApiError(409, f"{row.path} cannot be opened: {reason}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != row.size:
            raise _changed(row.path)
        data = handle.read(row.size + 1)
    if not content_matches(data, row.content_hash):
        raise _changed(row.path)
    return data, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _changed(path: str) -> ApiError:
    return ApiError(409, f"{path} changed on disk since it was indexed; run `searchengine index` "
                         "on its folder again")


def _sniff(data: bytes) -> str | None:
    """The image format read from the content (header only), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format if image.format in ACCEPTED_FORMATS else None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
