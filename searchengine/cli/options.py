"""Options shared by several commands, and the one place library errors become CLI errors."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from searchengine.errors import SearchEngineError
from searchengine.paths import display_path
from searchengine.settings import DEFAULT_HOME


def field_default(settings_class: type, name: str) -> Any:
    """The default of field `name` of a settings dataclass (its factory's value where it has one):
    an option takes its default from here, so the CLI and the library cannot drift apart."""
    field = next(f for f in dataclasses.fields(settings_class) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{settings_class.__name__}.{name} has no default")


def home_option(function: Callable) -> Callable:
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SEARCHENGINE_HOME",
        default=DEFAULT_HOME,
        show_default=f"$SEARCHENGINE_HOME, else ./{DEFAULT_HOME}",
        help="Folder holding the catalog and vector indexes.",
    )(function)


def catalog_option(function: Callable) -> Callable:
    """`--catalog URL` (or SEARCHENGINE_CATALOG) of every command that opens a home: the
    `catalog_url` of `Engine.open`."""
    return click.option(
        "--catalog",
        "catalog",
        envvar="SEARCHENGINE_CATALOG",
        default=None,
        metavar="URL",
        show_envvar=True,
        help="Keep the catalog in this database instead of HOME/catalog.sqlite, e.g. "
        "postgresql+psycopg://USER@HOST/DB (pip install 'searchengine[postgres]'); the index "
        "files stay in HOME.",
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


class ImageArgument(click.ParamType):
    """IMAGE of `similar`, `lookup`, `classify` and `match`: a file, or `id:N` for the catalog
    id N (a bare number is a file name, never guessed to be an id)."""

    name = "image"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if isinstance(value, str) and value.startswith("id:"):
            digits = value[3:]
            if not digits.isdigit() or not 0 < int(digits) < 2**63:
                self.fail(f"{value!r}: the id form is id:N with N a catalog id (1 or more)",
                          param, ctx)
            return int(digits)
        return value


def image_argument(function: Callable) -> Callable:
    return click.argument("image", type=ImageArgument())(function)


def json_option(function: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(function)


def k_option(function: Callable) -> Callable:
    return click.option(
        "-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Number of hits."
    )(function)


def show_progress(as_json: bool) -> bool:
    """Draw progress bars only for a person: stderr is a terminal and the output is no JSON.

    Piped or scripted runs get the command's one-line summary alone.
    """
    import sys

    return not as_json and sys.stderr.isatty()


# What Ctrl-C leaves behind, by command; a command not named here keeps nothing worth naming.
ON_INTERRUPT = {
    "index": "interrupted; the batches already written are kept: run the command again to "
    "continue",
    "add-texts": "interrupted; the texts already embedded are kept: run the command again to "
    "continue",
    "import": "interrupted; the batches already written are kept: run the command again to "
    "continue (what is there already is not added twice)",
    "export": "interrupted; OUT was not written (an export appears complete or not at all)",
    "train": "interrupted; --out keeps the run as of its last save (--save-every steps): run the "
    "same command with --resume to continue it",
    "tune": "interrupted; the home's default model is unchanged (it switches only after the "
    "candidate's space is complete); vectors the candidate already made are kept: "
    "`searchengine status` lists it, `searchengine remove-model SPEC` deletes them",
}


def handle_errors(function: Callable) -> Callable:
    """Turn library errors into a one-line message and exit status 1 (never a traceback)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SearchEngineError as error:
            raise click.ClickException(display_path(str(error))) from error
        except KeyboardInterrupt:
            context = click.get_current_context(silent=True)
            name = context.info_name if context else None
            click.echo(ON_INTERRUPT.get(name or "", "interrupted"), err=True)
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
