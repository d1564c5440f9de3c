"""What an operator can set about the HTTP server: one frozen dataclass, help per field."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from searchengine.ingest.watch import WatchSettings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass(frozen=True)
class ServerSettings:
    model: str | None = None
    """The model every request uses (None: the home's default). Requests cannot pick another one,
    so a client can never make the server load a model."""
    token: str | None = None
    """When set, every /api request needs it (`Authorization: Bearer TOKEN`, or the cookie that
    `POST /api/session` sets for the web page). Required when binding beyond loopback."""
    allowed_hosts: tuple[str, ...] | None = None
    """Accepted `Host` header names (None: any). `serve` on loopback allows only loopback names,
    which stops DNS-rebinding pages from reading the API through the user's browser."""
    max_upload_bytes: int = 20 * 1024 * 1024
    """Largest accepted request body (an uploaded image plus form fields); larger is HTTP 413."""
    max_upload_pixels: int = 50_000_000
    """Largest accepted uploaded image in pixels (decompression-bomb guard); larger is HTTP 413."""
    max_k: int = 200
    """Largest page size (`k`/`limit`) a search may ask for."""
    max_offset: int = 10_000
    """Largest `offset` a search may ask for (the engine fetches `offset + k` neighbours)."""
    max_query_chars: int = 1_000
    """Longest search sentence or `match` text, in characters (the model reads 77 tokens)."""
    max_labels: int = 50
    """Most labels one `classify` request may give (each label costs one text encoding per
    prompt template; classifications run one at a time, beside the searches). The library's
    own cap is `engine.MAX_LABELS`."""
    max_label_chars: int = 100
    """Longest `classify` label, in characters."""
    max_set_name_chars: int = 200
    """Longest text-set name (`set=`) a request may give."""
    thumbnail_sizes: tuple[int, ...] = (128, 256, 512, 1024)
    """Thumbnail edge lengths the server renders (a fixed set keeps the cache small)."""
    thumbnail_cache_bytes: int = 64 * 1024 * 1024
    """Memory for rendered thumbnails (least recently used are dropped first)."""
    max_original_bytes: int = 200 * 1024 * 1024
    """Catalogued files larger than this are not served as originals (thumbnails still are)."""
    text_batch_size: int = 64
    """Most search sentences encoded in one model call (the text batcher)."""
    text_batch_wait_ms: float = 2.0
    """How long a search sentence waits for others to join its model call while the model is
    idle (under load, sentences queue while the model works and need no wait)."""
    slow_text_chunk: int = 32
    """Sentences per model call of slow work (`classify`'s labels x templates): a search sentence
    that arrives meanwhile waits for one such call at most."""
    fast_threads: int = 64
    """Threads for searches and lookups at once (each mostly waits for its batch or FAISS)."""
    watch: tuple[str, ...] = ()
    """Folders the server keeps indexed while it runs (`serve --watch`, `server.watching`):
    photos added, changed, moved or deleted there show in searches without a restart."""
    watch_settings: WatchSettings = WatchSettings()
    """How that watcher batches changes, and how often it rescans the folders in full."""


def is_loopback(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1 (the addresses only this machine can reach)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
