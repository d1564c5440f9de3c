"""Content hashes: BLAKE3, the one hash of the catalog."""

from __future__ import annotations

import hashlib

from searchengine.hashing import content_hash, content_matches

# BLAKE3 of the empty input, from the BLAKE3 specification's test vectors.
EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_the_content_hash_is_blake3():
    assert content_hash(b"") == EMPTY_BLAKE3
    assert len(content_hash(b"photo")) == 64  # fits the catalog's String(64) column


def test_a_digest_matches_its_own_content_only():
    data = bytes(range(256)) * 4000  # over one BLAKE3 chunk, so the tree mode is exercised
    stored = content_hash(data)
    assert content_matches(data, stored)
    assert not content_matches(data[:-1] + b"\x00", stored)
    assert not content_matches(data + b"\x00", stored)


def test_a_blake2b_digest_of_the_same_content_does_not_match():
    """One hash: the unreleased schema never held BLAKE2b digests, so none is recognised."""
    data = b"indexed with BLAKE3 only"
    assert not content_matches(data, hashlib.blake2b(data, digest_size=20).hexdigest())
