"""The records the catalog takes and returns: small frozen dataclasses, no SQL."""

from __future__ import annotations

from dataclasses import dataclass

from searchengine.images import ImageInfo


@dataclass(frozen=True)
class StoredFile:
    """A catalogued file as the ingester compares it with the disk."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str
    metadata_version: int | None = None  # the extraction its metadata columns come from


@dataclass(frozen=True)
class NewImage:
    """A decoded file ready to be written with its vector."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str
    info: ImageInfo


@dataclass(frozen=True)
class Skip:
    """A file that could not be indexed and why."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class WriteResult:
    ids: list[int]
    removed: list[int]


@dataclass(frozen=True)
class ModelRow:
    id: int
    spec: str
    dim: int
    content_hash: str | None = None  # the checkpoint file's digest; None for hub/random weights
