"""Keeping a home in step with living folders: `searchengine watch` and `serve --watch`.

A `Watcher` follows file system events (watchdog: inotify on Linux, the platform's own service
elsewhere, a polling observer where those cannot watch) and turns each burst of them into one
`Engine.index` over the photos that changed (only new and changed files are embedded; a moved
file reuses its vector by content hash) and one `Engine.remove` of the paths that vanished.
There is no second ingest path: a round is an ordinary incremental `index`, under the home's
writer lock, one catalog transaction per batch.

- A burst ends when no event came for `quiet_seconds` (or after `max_wait_seconds` of steady
  events), so a copy of a thousand photos is one round, not a thousand.
- A file is read only once its writer is done: it was closed after its last write (inotify's
  close-write) and its size and mtime are the same at two looks `settle_seconds` apart. A file
  that still fails to decode is recorded as skipped with its size and mtime, and retried when
  it changes again (`scan.plan`), as every later write sends a new event.
- Every `rescan_seconds` (and once at start) the watched folders are indexed in full, which
  catches whatever the events missed: a full event queue, a folder beyond the inotify watch
  limit, a change on a network share made by another machine.
- While another writer holds the home (`searchengine index`), a round waits and is retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchengine.errors import HomeBusyError, InvalidInputError
from searchengine.paths import catalog_path
from searchengine.settings import IngestSettings

if TYPE_CHECKING:
    from searchengine.engine import Engine
    from searchengine.ingest.commit import IngestReport

log = logging.getLogger(__name__)
IGNORED_EVENTS = ("opened", "closed_no_write")  # our own reads of a file, among others
FOLLOW_SECONDS = 1.0  # how often a watcher with `follow` asks which model to index with


@dataclass(frozen=True)
class WatchSettings:
    """How a watcher batches events and when it rescans."""

    quiet_seconds: float = 1.5
    """A burst of events ends after this long without a new one; then one round indexes it."""
    max_wait_seconds: float = 30.0
    """A burst that never goes quiet (a long copy) is indexed this long after its first event,
    the files still being written left for a later round."""
    settle_seconds: float = 1.0
    """A changed file is read only when its size and mtime are the same at two looks this far
    apart (a file still being copied is left for a later round)."""
    writer_timeout_seconds: float = 120.0
    """A file written and not closed since (inotify only) is left alone until it is closed, or
    until it has been quiet this long (a writer that keeps its file open)."""
    rescan_seconds: float = 600.0
    """Index the watched folders in full this often: the fallback for events that were missed."""
    polling: bool = False
    """Poll the folders for changes instead of using the platform's events (network shares,
    whose changes made by other machines inotify never sees). Used anyway, with a warning, when
    events are unavailable or the inotify watch limit is reached."""
    poll_seconds: float = 5.0
    """How often the polling observer walks the folders (it stats every file each time)."""
    busy_retry_seconds: float = 2.0
    """How long a round waits before it tries again while another writer holds the home."""

    def check(self) -> WatchSettings:
        """The settings, or InvalidInputError naming the first duration that is not > 0."""
        for name in ("quiet_seconds", "max_wait_seconds", "settle_seconds",
                     "writer_timeout_seconds", "rescan_seconds", "poll_seconds",
                     "busy_retry_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                option = "--rescan" if name == "rescan_seconds" else name
                raise InvalidInputError(f"{option} must be a number of seconds above 0; got "
                                        f"{value!r}")
        return self


@dataclass(frozen=True)
class WatchRound:
    """What one round of a watcher did."""

    cause: str
    """`start` (the first full index), `events` (a burst of changes), `rescan`, or `model` (the
    full index with a model `follow` switched to)."""
    report: IngestReport | None
    """The `Engine.index` run over the changed files or the folders (None: nothing to index)."""
    forgotten: int
    """Files forgotten because they vanished (deleted, moved out of the watched folders)."""
    waiting: int
    """Files left for a later round: still being written."""

    @property
    def changed(self) -> bool:
        """Whether the round changed the home (something embedded, reused, skipped or forgotten)."""
        report = self.report
        return bool(self.forgotten) or report is not None and bool(
            report.embedded or report.reused or report.skipped or report.removed
        )

    def as_dict(self) -> dict[str, Any]:
        report = self.report.__dict__ if self.report is not None else {}
        return {"cause": self.cause, **report, "forgotten": self.forgotten,
                "waiting": self.waiting}


def check_watch_roots(paths: Sequence[str | Path]) -> list[Path]:
    """The folders to watch as the catalog names them; InvalidInputError for none, a path that
    does not exist or a file (a folder is watched, a file is indexed with `index`)."""
    if not paths:
        raise InvalidInputError("give at least one folder to watch")
    roots: list[Path] = []
    for path in paths:
        root = Path(catalog_path(path))
        if not root.exists():
            raise InvalidInputError(f"{path} does not exist; give an existing folder to watch")
        if not root.is_dir():
            raise InvalidInputError(f"{path} is a file; watch takes folders (index a single "
                                    "file with `searchengine index`)")
        if root not in roots:
            roots.append(root)
    return roots


@dataclass
class _Round:
    """The changes one round takes: files to read, folders to walk, paths that may be gone."""

    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    waiting: int = 0


class Changes:
    """The pending changes under watched roots, fed by watchdog's observer thread (it is the
    observer's event handler: `dispatch`) and taken by the watcher's rounds. Thread-safe."""

    def __init__(self, roots: Sequence[Path], extensions: Sequence[str], *, closes: bool):
        self.roots = [str(root) for root in roots]
        self.extensions = tuple(e.lower() for e in extensions)
        self.closes = closes  # the observer reports close-write events (inotify)
        self._lock = threading.Lock()
        self._files: dict[str, float] = {}  # path -> monotonic time of its last event
        self._writing: set[str] = set()  # written and not closed since (with `closes`)
        self._folders: dict[str, float] = {}  # folders moved in
        self._gone: dict[str, float] = {}  # paths deleted or moved away
        self._first: float | None = None  # the oldest pending event
        self._last = 0.0  # the newest event

    def dispatch(self, event) -> None:
        """watchdog's handler entry point: note one event (observer thread)."""
        kind = event.event_type
        if kind in IGNORED_EVENTS:
            return
        source = os.fsdecode(event.src_path)
        target = os.fsdecode(event.dest_path) if kind == "moved" else ""
        with self._lock:
            if event.is_directory:
                if kind in ("moved", "deleted") and self._visible(source):
                    self._mark_gone(source)
                if kind == "moved" and self._visible(target):
                    self._note(self._folders, target)
                return
            if kind in ("moved", "deleted"):
                if self._is_photo(source):
                    self._mark_gone(source)
                if kind == "moved" and self._is_photo(target):
                    self._touch(target, writing=False)
            elif self._is_photo(source):
                # a write: its writer is at work until it closes the file; a creation alone
                # (a folder moved in, a link) or a change of attributes says nothing of one
                writing = kind == "modified" or (kind != "closed" and source in self._writing)
                self._touch(source, writing=self.closes and writing)

    def _visible(self, path: str) -> bool:
        """Under a root and not hidden (no part of it below the root starts with a dot), as
        `scan` walks."""
        for root in self.roots:
            if path == root:
                return True
            if path.startswith(root.rstrip("/") + "/"):
                parts = path[len(root.rstrip("/")) + 1 :].split("/")
                return not any(part.startswith(".") for part in parts)
        return False

    def _is_photo(self, path: str) -> bool:
        return path.lower().endswith(self.extensions) and self._visible(path)

    def _note(self, table: dict[str, float], path: str) -> None:
        now = time.monotonic()
        table[path] = now
        self._last = now
        if self._first is None:
            self._first = now

    def _touch(self, path: str, *, writing: bool) -> None:
        self._gone.pop(path, None)
        self._note(self._files, path)
        if writing:
            self._writing.add(path)
        else:
            self._writing.discard(path)

    def _mark_gone(self, path: str) -> None:
        self._files.pop(path, None)
        self._writing.discard(path)
        self._folders.pop(path, None)
        self._note(self._gone, path)

    def due(self, settings: WatchSettings) -> bool:
        """Whether a round should run now: something is ready and the burst is quiet (or old)."""
        now = time.monotonic()
        with self._lock:
            if not self._ready(now, settings):
                return False
            first = self._first if self._first is not None else now
            return (now - self._last >= settings.quiet_seconds
                    or now - first >= settings.max_wait_seconds)

    def _ready(self, now: float, settings: WatchSettings) -> bool:
        return bool(self._gone or self._folders or any(
            self._writer_done(path, now, settings) for path in self._files
        ))

    def _writer_done(self, path: str, now: float, settings: WatchSettings) -> bool:
        return (path not in self._writing
                or now - self._files[path] >= settings.writer_timeout_seconds)

    def take(self, settings: WatchSettings) -> _Round:
        """Take what is ready; files still open for writing stay pending."""
        now = time.monotonic()
        with self._lock:
            taken = _Round(
                files=[p for p in self._files if self._writer_done(p, now, settings)],
                folders=list(self._folders),
                gone=list(self._gone),
            )
            for path in taken.files:
                del self._files[path]
                self._writing.discard(path)
            self._folders.clear()
            self._gone.clear()
            taken.waiting = len(self._files)
            self._first = min(self._files.values(), default=None)
            return taken

    def give_back(self, taken: _Round, *, files: Sequence[str] | None = None) -> None:
        """Put changes a round did not carry out back (all of `taken`, or only `files`)."""
        with self._lock:
            for path in taken.files if files is None else files:
                if path not in self._gone:
                    self._touch(path, writing=False)
            if files is None:
                for folder in taken.folders:
                    self._note(self._folders, folder)
                for path in taken.gone:
                    if path not in self._files:
                        self._note(self._gone, path)


def _look(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None when it is gone (or no longer a file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if os.path.isfile(path) else None


class Watcher:
    """Index the photos under `roots` into `engine` as they change, until told to stop.

    `engine` (an open Engine, used by this watcher alone) writes through `Engine.index` and
    `Engine.remove`; `model` and `ingest` are `index`'s. `follow`, when given, names the model
    to index with from now on (a server's model, which `tune` or `use-model` may switch); it is
    asked every `FOLLOW_SECONDS`, and a new answer starts a full round of the roots with that
    model, so photos that came after the switch's re-embedding get its vectors too. See the
    module's docstring."""

    def __init__(self, engine: Engine, roots: Sequence[str | Path], *, model: str | None = None,
                 settings: WatchSettings = WatchSettings(),
                 ingest: IngestSettings = IngestSettings(), progress: bool = False,
                 follow: Callable[[], str] | None = None):
        self.engine = engine
        self.roots = check_watch_roots(roots)
        self.follow = follow
        self.model = follow() if follow is not None else model
        self._followed = time.monotonic()
        self._owed_model_round = False
        self.settings = settings.check()
        self.ingest = ingest
        self.progress = progress
        self.method = "not started"  # how changes are seen: "inotify", "polling every 5 s", ...
        self._busy_told = False

    def run(self, stop: threading.Event,
            on_round: Callable[[WatchRound], None] | None = None) -> None:
        """Index the roots once, then follow their changes until `stop` is set; each round's
        outcome goes to `on_round`. A round under way when `stop` is set finishes first (its
        batches commit). Errors other than a busy home end the run."""
        report = on_round or (lambda _: None)
        changes, observer = self._observe()
        try:
            while not stop.is_set():  # the first full index, once the home is free
                done = self._index_roots("start")
                if done is not None:
                    report(done)
                    break
                stop.wait(self.settings.busy_retry_seconds)
            next_rescan = time.monotonic() + self.settings.rescan_seconds
            while not stop.is_set():
                if self._model_switched() or self._owed_model_round:
                    done = self._index_roots("model")
                    self._owed_model_round = done is None  # a busy home: again after a wait
                    if done is None:
                        stop.wait(self.settings.busy_retry_seconds)
                elif changes.due(self.settings):
                    done = self._events_round(changes, stop)
                elif time.monotonic() >= next_rescan:
                    done = self._index_roots("rescan")
                    next_rescan = time.monotonic() + (
                        self.settings.rescan_seconds if done is not None
                        else self.settings.busy_retry_seconds)
                else:
                    stop.wait(min(0.1, self.settings.quiet_seconds / 4))
                    continue
                if done is not None:
                    report(done)
        finally:
            observer.stop()
            observer.join(timeout=10)

    def _model_switched(self) -> bool:
        """Whether `follow` names another model than the rounds so far used (asked at most
        every FOLLOW_SECONDS); if so, the rounds use it from now on."""
        if self.follow is None or time.monotonic() - self._followed < FOLLOW_SECONDS:
            return False
        self._followed = time.monotonic()
        model = self.follow()
        if model == self.model:
            return False
        log.info("now indexing with %s (was %s): indexing %s with it", model, self.model,
                 ", ".join(map(str, self.roots)))
        self.model = model
        return True

    # -- observing ------------------------------------------------------------------------

    def _observe(self):
        """(Changes, a started watchdog observer feeding it): the platform's events, else (or
        with `polling`) a polling observer, saying why in the log."""
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        extensions = self.ingest.extensions
        if not self.settings.polling:
            changes = Changes(self.roots, extensions, closes=_reports_closes(Observer))
            observer = Observer()
            try:
                self._schedule(observer, changes)
                observer.start()
            except OSError as error:
                with contextlib.suppress(OSError, RuntimeError):
                    observer.stop()  # the emitters that did start
                log.warning("cannot watch %s for events (%s); polling every %g s instead%s",
                            ", ".join(map(str, self.roots)), _why(error),
                            self.settings.poll_seconds, _limit_hint(error))
            else:
                self.method = _observer_name(observer)
                log.info("watching %s (%s)", ", ".join(map(str, self.roots)), self.method)
                return changes, observer
        changes = Changes(self.roots, extensions, closes=False)
        observer = PollingObserver(timeout=self.settings.poll_seconds)
        self._schedule(observer, changes)
        observer.start()
        self.method = f"polling every {self.settings.poll_seconds:g} s"
        log.info("watching %s (%s)", ", ".join(map(str, self.roots)), self.method)
        return changes, observer

    def _schedule(self, observer, changes: Changes) -> None:
        from watchdog.events import FileSystemEventHandler

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                changes.dispatch(event)

        handler = Handler()
        for root in self.roots:
            observer.schedule(handler, str(root), recursive=True)

    # -- rounds ---------------------------------------------------------------------------

    def _index_roots(self, cause: str) -> WatchRound | None:
        """A full incremental index of the roots that exist; None while the home is busy."""
        roots = [root for root in self.roots if root.is_dir()]
        for root in self.roots:
            if root not in roots:
                log.warning("%s is gone; its photos were forgotten when it went", root)
        if not roots:
            return WatchRound(cause, None, 0, 0)
        try:
            report = self.engine.index(roots, model=self.model, settings=self.ingest,
                                       progress=self.progress)
        except HomeBusyError as error:
            self._wait_note(error)
            return None
        except InvalidInputError:
            if all(root.is_dir() for root in roots):
                raise
            return None  # a root went meanwhile: its deletion comes as an event
        self._busy_told = False
        return WatchRound(cause, report, 0, 0)

    def _events_round(self, changes: Changes, stop: threading.Event) -> WatchRound | None:
        """Index the files a burst changed once they are settled, then forget what vanished;
        None (everything given back) while the home is busy."""
        taken = changes.take(self.settings)
        first = {path: _look(path) for path in taken.files}
        if any(look is not None for look in first.values()):
            stop.wait(self.settings.settle_seconds)
        settled, unsettled, gone = [], [], list(taken.gone)
        for path, look in first.items():
            now = _look(path)
            if now is None:
                gone.append(path)
            elif now == look:
                settled.append(path)
            else:
                unsettled.append(path)  # still growing: its next look comes next round
        changes.give_back(taken, files=unsettled)
        folders = [folder for folder in taken.folders if os.path.isdir(folder)]
        vanished = [path for path in gone if not os.path.lexists(path)]
        try:
            report = None
            if settled or folders:
                report = self.engine.index([*settled, *folders], model=self.model,
                                           settings=self._round_settings(len(settled), folders),
                                           progress=self.progress)
            forgotten = self._forget(vanished)  # after: a moved file reused its vector first
        except HomeBusyError as error:
            changes.give_back(taken)
            self._wait_note(error)
            stop.wait(self.settings.busy_retry_seconds)
            return None
        except InvalidInputError as error:
            if all(os.path.exists(path) for path in [*settled, *folders]):
                raise
            log.info("a file went during the round (%s); trying again", error)
            changes.give_back(taken)  # a file vanished between its look and the index
            return None
        self._busy_told = False
        return WatchRound("events", report, forgotten, taken.waiting + len(unsettled))

    def _round_settings(self, files: int, folders: list[str]) -> IngestSettings:
        """`ingest`, decoding in this process for a round of less than one batch of files:
        starting decode workers would take longer than decoding them here."""
        if folders or files >= self.ingest.batch_size or not self.ingest.workers:
            return self.ingest
        return dataclasses.replace(self.ingest, workers=0)

    def _forget(self, paths: list[str]) -> int:
        """Forget the catalogued files (and skips) at or under `paths`, which are gone."""
        if not paths:
            return 0
        catalog = self.engine.catalog
        if not catalog.files_under(paths) and not catalog.skipped_under(paths):
            return 0
        return self.engine.remove(paths)

    def _wait_note(self, error: HomeBusyError) -> None:
        if not self._busy_told:
            log.warning("%s; the watcher waits and retries every %g s", error,
                        self.settings.busy_retry_seconds)
            self._busy_told = True


def _reports_closes(observer_class) -> bool:
    """Whether the observer reports close-write events (inotify does)."""
    return "inotify" in observer_class.__module__


def _observer_name(observer) -> str:
    name = type(observer).__name__.removesuffix("Observer").lower()
    return name or "events"


def _why(error: OSError) -> str:
    return error.strerror or str(error)


def _limit_hint(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return ("; raise the limit with `sysctl fs.inotify.max_user_watches=524288` "
                "(see docs/watch.md)")
    if error.errno == errno.EMFILE:
        return "; raise fs.inotify.max_user_instances (see docs/watch.md)"
    return ""
