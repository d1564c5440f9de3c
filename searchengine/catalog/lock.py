"""The home's writer lock: one process at a time changes a home's catalog and index files.

Every write (index, remove, add-texts, use-model, check --repair) holds an exclusive `flock` on
`HOME/write.lock` for its whole run; readers (search, status, check, serve) never take it. The
kernel drops the lock when its holder exits, even on SIGKILL, so a crash never leaves a home
locked. The holder writes its pid and command into the file, which names it to a second writer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

from searchengine.errors import CatalogError, HomeBusyError

log = logging.getLogger(__name__)
LOCK_NAME = "write.lock"
_POLL_SECONDS = 0.2


class HomeLock:
    """An exclusive, non-reentrant lock on one home, held between `acquire` and `release`."""

    def __init__(self, home: Path, command: str):
        self.home = home
        self.command = command  # what a second writer is told is running, e.g. "index"
        self.path = home / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to `timeout` seconds (0: fail at once) for its holder.

        Raises HomeBusyError naming the holder's command and pid when it stays taken.
        """
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise CatalogError(
                f"cannot write to the home {self.home} ({error.strerror}); "
                "check that it is a folder you may write to"
            ) from error
        deadline = time.monotonic() + max(timeout, 0.0)
        told = False
        while not _try_lock(descriptor):
            holder = _describe_holder(descriptor)
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise HomeBusyError(
                    f"another {holder} is running on {self.home}; wait for it to finish (or stop "
                    f"it), then run `searchengine {self.command}` again"
                )
            if not told:
                log.warning("waiting up to %.0f s for %s on %s", timeout, holder, self.home)
                told = True
            time.sleep(_POLL_SECONDS)
        os.ftruncate(descriptor, 0)
        holder_note = {"pid": os.getpid(), "command": self.command, "since": _now()}
        os.pwrite(descriptor, json.dumps(holder_note).encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            os.ftruncate(descriptor, 0)
        finally:
            os.close(descriptor)  # closing the descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _try_lock(descriptor: int) -> bool:
    import fcntl

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _describe_holder(descriptor: int) -> str:
    """`searchengine index` (pid 123, since 08:01:02), from the holder's note in the lock file."""
    for _ in range(3):  # the holder writes its note right after taking the lock
        try:
            note = json.loads(os.pread(descriptor, 4096, 0).decode() or "null")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            note = None
        if isinstance(note, dict) and "pid" in note:
            return (
                f"`searchengine {note.get('command', 'command')}` "
                f"(pid {note['pid']}, since {note.get('since', '?')})"
            )
        time.sleep(0.05)
    return "searchengine writer"


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")
