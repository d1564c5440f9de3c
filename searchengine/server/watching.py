"""`serve --watch`: the server keeps folders indexed, in a thread beside the requests.

The watcher (`ingest.watch.Watcher`) writes through an engine of its own on the same home, as
another process would: its own catalog connection, its own in-memory indexes, the home's writer
lock for each round. The server's engine reads an index file again once its manifest changed
(`VectorSpace.changed_on_disk`, one stat per request), so searches keep answering through a
round, from the indexes as they were, and show the new photos once the round saved them. No
lock is shared between the two but the catalog's own (SQLite in WAL mode: readers never wait
for the writer). The watcher embeds with the server's encoder, behind the server's gate
(`gate.py`) as slow work, so a search's sentence waits for one image's model call at most.
It indexes with the model the server serves: when `tune` or `use-model` switches the home's
default and the server has loaded it, the watcher indexes the folders with it in full (only
photos without its vectors are embedded) and goes on with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from searchengine.errors import SearchEngineError
from searchengine.ingest.watch import Watcher, WatchRound, WatchSettings, check_watch_roots
from searchengine.settings import IngestSettings

if TYPE_CHECKING:
    from searchengine.encoder import Encoder
    from searchengine.engine import Engine

log = logging.getLogger(__name__)
STOP_WAIT_SECONDS = 30.0  # how long a stopping server waits for the round under way


class ServeWatcher:
    """A watcher thread for a server's home; `start` it once, `stop` it when the server stops."""

    def __init__(self, engine: Engine, served: Callable[[], tuple[str, Encoder]],
                 roots: Sequence[str | Path], settings: WatchSettings = WatchSettings()):
        """`served()` gives the model the server serves now and its (gated) encoder."""
        self.home = engine.home
        self.catalog_url = None if engine.catalog.home is not None else engine.catalog.url
        self.encoder_settings = engine.encoder_settings
        self.served = served
        self.roots = check_watch_roots(roots)
        self.settings = settings.check()
        self.rounds = 0  # rounds done (the first, full one included)
        self.changes = 0  # rounds that changed the home
        self.error: str | None = None  # why the watcher stopped on its own, if it did
        self._stop = threading.Event()
        self._watcher: Watcher | None = None
        self._thread = threading.Thread(target=self._run, name="searchengine-watch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT_SECONDS) -> None:
        """Stop after the round under way (its batches commit); a round still running after
        `timeout` seconds is left behind (the process exit ends it; the batch in flight rolls
        back and the next writer re-syncs the index files)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the watcher's round did not finish within %.0f s; leaving it",
                            timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def model(self) -> str | None:
        """The model the watcher's rounds embed with (None before it started)."""
        return self._watcher.model if self._watcher is not None else None

    def _run(self) -> None:
        from searchengine.engine import Engine

        try:
            with Engine.open(self.home, create=False, catalog_url=self.catalog_url,
                             encoder_settings=self.encoder_settings) as engine:
                def follow() -> str:
                    model, encoder = self.served()
                    engine.use_encoder(encoder)
                    return model

                # decode in this thread: no worker processes forked from a server's threads
                self._watcher = Watcher(engine, self.roots, follow=follow,
                                        settings=self.settings, ingest=IngestSettings(workers=0))
                self._watcher.run(self._stop, on_round=self._log_round)
        except SearchEngineError as error:
            self.error = str(error)
            log.error("serve --watch stopped watching %s: %s",
                      ", ".join(map(str, self.roots)), error)

    def _log_round(self, done: WatchRound) -> None:
        self.rounds += 1
        if not done.changed:
            return
        self.changes += 1
        report = done.report
        log.info("watch %s: %s embedded, %s reused, %s skipped, %s removed", done.cause,
                 report.embedded if report else 0, report.reused if report else 0,
                 report.skipped if report else 0,
                 (report.removed if report else 0) + done.forgotten)
