"""Metadata read again for files that need no embedding: a home from before revision 0004.

`index` finds such files unchanged (same size and mtime, a vector stored) but with metadata
columns from an older extraction (`exif.METADATA_VERSION`); their headers are read (Pillow opens
a file lazily: no pixel is decoded) and the columns written, batch by batch. The model is never
loaded for them and their vectors stay as they are.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from searchengine.catalog import Catalog, StoredFile
from searchengine.catalog.filtering import write_metadata
from searchengine.errors import ImageDecodeError
from searchengine.images import ImageInfo, read_info
from searchengine.progress import progress_bar
from searchengine.settings import IngestSettings

log = logging.getLogger(__name__)
BATCH = 500  # files a transaction
THREADS = 4  # header reads at once (waiting on the disk, mostly)


def refresh_metadata(
    catalog: Catalog, files: list[StoredFile], settings: IngestSettings, *, progress: bool = False
) -> int:
    """Read the metadata of `files` again and store it; returns how many were refreshed. A file
    that cannot be read now keeps its row as it is (the next run tries again)."""
    refreshed = 0
    bar = progress_bar(len(files), desc="metadata", unit="img", enabled=progress)
    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            for start in range(0, len(files), BATCH):
                batch = files[start : start + BATCH]
                infos = list(pool.map(lambda file: _info(file, settings.max_pixels), batch))
                found = [(file.id, info) for file, info in zip(batch, infos, strict=True)
                         if info is not None]
                write_metadata(catalog, found)
                refreshed += len(found)
                bar.update(len(batch))
    finally:
        bar.close()
    return refreshed


def _info(file: StoredFile, max_pixels: int) -> ImageInfo | None:
    try:
        return read_info(Path(file.path), max_pixels=max_pixels)
    except (ImageDecodeError, OSError) as error:
        log.info("%s: metadata not read again (%s)", file.path, error)
        return None
