"""The `searchengine` command: a thin shell over the library.

Each command opens what it needs, calls one library function, and formats what comes back (a
table for people, `--json` for scripts). No SQL, torch or FAISS here; library errors become
`click.ClickException` (exit 1) in `options.handle_errors`.
"""

from __future__ import annotations

import logging

import click

from searchengine.cli import bench, collection, demo, serve, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="searchengine")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Cross-modal (CLIP) search over your photos: text->image, image->image, image->text.

    Example:

        searchengine index ~/Pictures

        searchengine search "a dog on the beach" -k 10
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s"
    )


for module in (collection, train, bench, demo, serve):
    for command in module.COMMANDS:
        cli.add_command(command)
