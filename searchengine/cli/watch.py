"""The `watch` command: a home kept in step with living folders (docs/watch.md)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import click

from searchengine.cli.options import (
    catalog_option,
    echo_line,
    field_default,
    handle_errors,
    home_option,
    model_option,
    show_progress,
)
from searchengine.ingest.watch import WatchSettings


def _watch_settings(rescan: float, polling: bool) -> WatchSettings:
    return WatchSettings(rescan_seconds=rescan, polling=polling).check()


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@home_option
@catalog_option
@model_option
@click.option("--rescan", type=float, default=field_default(WatchSettings, "rescan_seconds"),
              show_default=True, metavar="SECONDS",
              help="Index the folders in full this often, the fallback for missed events.")
@click.option("--polling", is_flag=True,
              help="Poll the folders instead of using inotify (network shares changed by other "
              "machines); used anyway, with a warning, when inotify cannot watch them.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode processes beside the model [default: min(2, CPUs)].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per round (a line each, also for rounds that changed "
              "nothing).")
@handle_errors
def watch(paths, home, catalog, model, rescan, polling, workers, as_json):
    """Index the photos under PATHS as they appear, change, move or vanish, until stopped.

    The folders are indexed once (only what changed since), then each burst of changes is one
    incremental index (a moved photo keeps its vector; a file still being copied is read once
    it is complete). One line per round that changed something (--json: one JSON object per
    line). Ctrl-C or SIGTERM stops after the round under way (Ctrl-C twice: at once, the
    batches written so far kept). See docs/watch.md.

    Example:

        searchengine watch ~/Pictures --home indexes

        searchengine watch /mnt/nas/photos --polling --rescan 3600
    """
    from searchengine.cli.collection import _engine
    from searchengine.ingest.watch import Watcher
    from searchengine.settings import IngestSettings, passive_openmp_waits

    settings = _watch_settings(rescan, polling)
    passive_openmp_waits()  # before torch loads: decode workers and the model share the cores
    ingest = IngestSettings(**({"workers": workers} if workers is not None else {}))
    stop = threading.Event()
    with _engine(home, catalog, create=True) as engine:
        watcher = Watcher(engine, list(paths), model=model, settings=settings, ingest=ingest,
                          progress=show_progress(as_json))
        echo_line(f"watching {', '.join(map(str, watcher.roots))} for {engine.home} "
                  "(Ctrl-C stops)", err=True)
        previous = _stop_on_signals(stop)
        try:
            watcher.run(stop, on_round=lambda done: _print_round(done, as_json))
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
    echo_line(f"stopped watching ({watcher.method})", err=True)


def _stop_on_signals(stop: threading.Event) -> dict:
    """SIGINT and SIGTERM set `stop` (the round under way finishes); a second one interrupts
    at once (KeyboardInterrupt: the batches already committed stay). Returns the handlers
    replaced."""

    def handle(number, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the round under way (Ctrl-C again stops at once)", err=True)

    return {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}


def _print_round(done, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(done.as_dict(), default=str))
        return
    if not done.changed and done.cause != "start":
        return
    parts = []
    report = done.report
    if report is not None:
        parts.append(f"{report.embedded} embedded, {report.reused} reused, "
                     f"{report.skipped} skipped, {report.removed + done.forgotten} removed "
                     f"({report.scanned} file{'' if report.scanned == 1 else 's'} looked at)")
    elif done.forgotten:
        parts.append(f"{done.forgotten} removed")
    if done.waiting:
        parts.append(f"{done.waiting} still being written")
    click.echo(f"{time.strftime('%H:%M:%S')} {done.cause}: {'; '.join(parts) or 'no change'}")


COMMANDS: list[click.Command] = [watch]
