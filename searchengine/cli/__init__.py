"""The `searchengine` command: a thin shell over the library.

Each command opens what it needs, calls one library function, and formats what comes back (a
table for people, `--json` for scripts). No SQL, torch or FAISS here; library errors become
`click.ClickException` (exit 1) in `options.handle_errors`.
"""

from __future__ import annotations

import logging

import click

from searchengine.cli import (
    bench,
    clipformat,
    collection,
    demo,
    duplicates,
    serve,
    train,
    tune,
    watch,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="searchengine")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="The engine's log (-vv: debug); -vvv adds other libraries' log (Alembic, FAISS, ...).",
)
def cli(verbose: int) -> None:
    """Cross-modal (CLIP) search over your photos: text->image, image->image, image->text.

    Example:

        searchengine index ~/Pictures

        searchengine search "a dog on the beach" -k 10
    """
    configure_logging(verbose)


def configure_logging(verbose: int) -> None:
    """Warnings only by default. -v shows the engine's own INFO log (`searchengine.*`), -vv its
    DEBUG log; other libraries (Alembic's migration notes, FAISS's loader, open_clip) stay at
    WARNING until -vvv (INFO) and -vvvv (DEBUG)."""
    from searchengine.progress import LogAboveBars

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", handlers=[LogAboveBars()])
    if not verbose:
        return  # the root logger's own default, WARNING, holds for everything
    own = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    others = max(logging.WARNING - 10 * max(verbose - 2, 0), logging.DEBUG)
    logging.getLogger().setLevel(others)
    logging.getLogger("searchengine").setLevel(own)


for module in (collection, duplicates, clipformat, train, tune, bench, demo, serve, watch):
    for command in module.COMMANDS:
        cli.add_command(command)
