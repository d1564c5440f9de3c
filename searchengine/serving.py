"""HOME/serve.json: a running `searchengine serve` tells other commands on its home where it is.

`serve` writes the record once it listens (atomically: a reader sees the old file or the new
one) and removes it when it stops cleanly; a `serve` killed outright leaves it behind, so a
reader trusts a record only while its process lives and the home's catalog is still the file
the server opened (a home copied elsewhere, or rebuilt, does not inherit it). The server sends its
`instance` in the `X-Searchengine-Instance` header, so a reader also tells it apart from another
program that took the port since.

Standard library only: the CLI reads this before deciding whether to load torch at all.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SERVE_FILE = "serve.json"
CATALOG_FILE = "catalog.sqlite"  # as `catalog.store.CATALOG_NAME` (not imported: SQLAlchemy)
INSTANCE_HEADER = "X-Searchengine-Instance"


@dataclass(frozen=True)
class ServeRecord:
    """Where and what a running `serve` is."""

    pid: int
    """The server's process id."""
    url: str
    """Base URL a command on this machine reaches it at, e.g. `http://127.0.0.1:8000`."""
    started: str
    """When it started answering, ISO 8601 UTC."""
    instance: str
    """A random id of this server run (sent in every search answer's `X-Searchengine-Instance`)."""
    home: str
    """The home's resolved path."""
    catalog: tuple[int, int] | None
    """(st_dev, st_ino) of the home's catalog file when the server opened it."""
    model: str | None
    """The `--model` the server pins, as given; None: it follows the home's default model."""
    token: bool
    """Whether requests need the server's token (`$SEARCHENGINE_TOKEN` for the CLI)."""


def catalog_identity(home: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the home's catalog file, None when there is none."""
    try:
        stat = (home / CATALOG_FILE).stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def write_record(home: Path, record: ServeRecord) -> Path:
    """Write HOME/serve.json atomically; returns its path. Raises OSError (a read-only home)."""
    target = home / SERVE_FILE
    descriptor, temporary = tempfile.mkstemp(prefix=".serve-", suffix=".json", dir=home)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(record), handle, indent=2)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def remove_record(home: Path, instance: str) -> None:
    """Remove HOME/serve.json if it is still this server's (another may have started since)."""
    target = home / SERVE_FILE
    current = _load(target)
    if current is not None and current.get("instance") != instance:
        return
    try:
        target.unlink(missing_ok=True)
    except OSError as error:
        log.warning("could not remove %s: %s", target, error)


def read_record(home: Path) -> ServeRecord | None:
    """The record of a `serve` running on `home` now, or None: no file, an unreadable one, or a
    stale one (its process is gone, or the home's catalog is another file than the one it
    served)."""
    raw = _load(home / SERVE_FILE)
    if raw is None:
        return None
    try:
        catalog = raw["catalog"]
        record = ServeRecord(
            pid=int(raw["pid"]), url=str(raw["url"]), started=str(raw["started"]),
            instance=str(raw["instance"]), home=str(raw["home"]),
            catalog=tuple(catalog) if catalog is not None else None,
            model=raw["model"], token=bool(raw["token"]),
        )
    except (KeyError, TypeError, ValueError):
        log.debug("%s is not a serve record; ignored", home / SERVE_FILE)
        return None
    if not process_alive(record.pid):
        log.debug("%s names process %d, which has ended; ignored", home / SERVE_FILE, record.pid)
        return None
    if record.catalog != catalog_identity(home):
        log.debug("%s was written for another catalog file; ignored", home / SERVE_FILE)
        return None
    return record


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would end the process there; the instance header decides
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def _load(path: Path) -> dict | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None
