"""The `duplicates` command: groups of near-duplicate photos, for a person to keep the best."""

from __future__ import annotations

import click

from searchengine.cli.options import (
    catalog_option,
    echo_json,
    echo_line,
    echo_table,
    handle_errors,
    home_option,
    json_option,
    model_option,
)
from searchengine.settings import DUPLICATE_THRESHOLD


@click.command()
@click.option(
    "--threshold",
    type=float,
    default=DUPLICATE_THRESHOLD,
    show_default=True,
    metavar="COSINE",
    help="Cosine similarity (-1 to 1) from which two photos count as near-duplicates.",
)
@home_option
@catalog_option
@model_option
@json_option
@handle_errors
def duplicates(threshold, home, catalog, model, as_json):
    """Group photos that are near-copies (bursts, resized or re-encoded copies, exact copies).

    Each group lists its photos best first (most pixels, then largest file) with size,
    resolution, date and their similarity to the first. Nothing is changed or deleted.

    Example:

        searchengine duplicates --threshold 0.95

        searchengine duplicates --json > groups.json
    """
    from searchengine.cli.collection import _engine

    with _engine(home, catalog) as engine:
        report = engine.duplicates(threshold=threshold, model=model)
    if as_json:
        echo_json(report.as_dict())
        return
    if not report.groups:
        click.echo(
            f"no near-duplicates among {report.photos} photos at threshold {report.threshold} "
            f"[{report.model}]"
        )
        return
    for number, group in enumerate(report.groups, start=1):
        click.echo(f"group {number}: {len(group.photos)} photos")
        echo_table(
            ["score", "id", "size", "resolution", "taken", "path"],
            [_row(photo) for photo in group.photos],
        )
        click.echo("")
    grouped = sum(len(group.photos) for group in report.groups)
    echo_line(
        f"{len(report.groups)} groups ({grouped} photos) among {report.photos} photos at "
        f"threshold {report.threshold} [{report.model}]"
    )


def _row(photo) -> list:
    from searchengine.index.kinds import format_size

    return [
        "same file" if photo.same_content else f"{photo.score:.4f}",
        photo.id,
        format_size(photo.size),
        f"{photo.width}x{photo.height}",
        photo.taken_at.isoformat(sep=" ") if photo.taken_at else "-",
        photo.path,
    ]


COMMANDS = [duplicates]
