"""`search QUERY --in FOLDER`: rclip's one-step habit, index a folder then search within it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import click

from searchengine.cli.filters import build_filter
from searchengine.cli.options import echo_line, show_progress
from searchengine.paths import display_path

# the filter options' parameter names, in `build_filter`'s order
FILTER_NAMES = ("after", "before", "camera", "folder", "near", "formats")
SEARCH_IN_LOCK_SECONDS = 120.0  # how long `--in` waits for a writer at work (a watcher's round)


def in_folder_option(command: Callable) -> Callable:
    """`--in FOLDER` of `search`: with it, `search_in_folder` answers instead of the command."""

    @functools.wraps(command)
    def wrapper(*args, in_folder: Path | None = None, **kwargs):
        if in_folder is None:
            return command(*args, **kwargs)
        if kwargs.get("folder") is not None:
            raise click.UsageError("--in and --folder both name a folder: give one of them")
        filters = build_filter(*(kwargs.get(name) for name in FILTER_NAMES))
        return search_in_folder(
            kwargs["query"], in_folder, home=kwargs["home"], catalog=kwargs["catalog"],
            model=kwargs["model"], k=kwargs["k"], offset=kwargs["offset"],
            as_json=kwargs["as_json"], like=kwargs.get("like", ()),
            unlike=kwargs.get("unlike", ()), filters=filters,
            min_score=kwargs.get("min_score"), sort=kwargs.get("sort", "score"),
        )

    return click.option(
        "--in", "in_folder", type=click.Path(path_type=Path), default=None, metavar="FOLDER",
        help="Index FOLDER first (only what changed; a bar on stderr), then search only the "
        "photos under it (with the other filters, if any). Always searched here, not through "
        "a running serve.",
    )(wrapper)


def search_in_folder(query: str, folder: Path, *, home: Path, catalog: str | None,
                     model: str | None, k: int, offset: int, as_json: bool, like: tuple,
                     unlike: tuple, filters=None, min_score: float | None = None,
                     sort: str = "score") -> None:
    """`search QUERY --in FOLDER`: index FOLDER (only what changed, a bar on stderr), then
    search among its photos alone. Always here, not through a running `serve` (its API cannot
    narrow to a folder); a writer at work on the home (a watcher's round) is waited for."""
    from searchengine.cli.collection import _print_result  # a cycle at import time
    from searchengine.engine import Engine
    from searchengine.query.folders import check_folder
    from searchengine.settings import passive_openmp_waits

    check_folder(folder)  # before a home is made for it
    passive_openmp_waits()
    with Engine.open(home, create=True, catalog_url=catalog,
                     lock_timeout=SEARCH_IN_LOCK_SECONDS) as engine:
        report = engine.index([folder], model=model, progress=show_progress(as_json))
        if report.embedded or report.reused or report.removed:
            echo_line(f"indexed {display_path(str(folder))}: {report.embedded} embedded, "
                      f"{report.reused} reused, {report.removed} removed", err=True)
        result = engine.search_in(query, folder, k=k, model=model, offset=offset,
                                  like=list(like), unlike=list(unlike), filters=filters,
                                  min_score=min_score, sort=sort)
        _print_result(result, as_json, min_score)


