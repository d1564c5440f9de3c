"""Options shared by several commands, and the one place library errors become CLI errors."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from searchengine.errors import SearchEngineError
from searchengine.paths import display_path


def home_option(function: Callable) -> Callable:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SEARCHENGINE_HOME",
        default="indexes",
        show_default="$SEARCHENGINE_HOME, else ./indexes",
        help="Folder holding the catalog and vector indexes.",
    )(function)


def model_option(function: Callable) -> Callable:
    return click.option(
        "--model",
        "model",
        default=None,
        metavar="SPEC",
        help="ARCH/PRETRAINED, ARCH/path/to/checkpoint.pt, ARCH/random or `demo` "
        "[default: the home's default model, else ViT-B-32/laion2b_s34b_b79k].",
    )(function)


def json_option(function: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(function)


def k_option(function: Callable) -> Callable:
    return click.option(
        "-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of hits."
    )(function)


def handle_errors(function: Callable) -> Callable:
    """Turn library errors into a one-line message and exit status 1 (never a traceback)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SearchEngineError as error:
            raise click.ClickException(display_path(str(error))) from error
        except KeyboardInterrupt:
            click.echo(
                "interrupted; finished work is kept, run the command again to resume", err=True
            )
            raise SystemExit(130) from None

    return wrapper


def echo_json(payload: Any) -> None:
    """One JSON document, valid UTF-8: bytes of file names that are not UTF-8 show as `\\xNN`."""
    click.echo(json.dumps(_printable(payload), indent=2, ensure_ascii=False, default=str))


def echo_line(text: str, *, err: bool = False) -> None:
    """`click.echo` of a line that may hold file names that are not UTF-8 (shown as `\\xNN`)."""
    click.echo(display_path(text), err=err)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return display_path(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    return value


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Left-aligned columns, widths from the content; floats with 4 decimals."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else display_path(str(value))
