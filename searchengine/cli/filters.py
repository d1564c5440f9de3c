"""The filter options of `search` and `similar`: the keyword arguments `filters`, `min_score`
and `sort` of `Engine.search` / `Engine.similar`. A bad value exits with status 2 and the
library's message (`query.filters` checks every value; the CLI only parses)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from searchengine.errors import InvalidInputError

SORT_CHOICES = ("score", "date")


class _Checked(click.ParamType):
    """A value checked by a `query.filters` parser; its InvalidInputError is a usage error."""

    def __init__(self, name: str, parse: Callable[[str], Any]):
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except InvalidInputError as error:
            self.fail(str(error), param, ctx)


def _after(text: str):
    from searchengine.query.filters import parse_time

    return parse_time(text)


def _before(text: str):
    from searchengine.query.filters import parse_time

    return parse_time(text, end=True)


def _near(text: str):
    from searchengine.query.filters import parse_near

    return parse_near(text)


def _formats(text: str):
    from searchengine.query.filters import parse_formats

    return parse_formats(text)


_OPTIONS = (
    click.option("--after", type=_Checked("date", _after), default=None, metavar="DATE",
                 help="Only photos taken at or after DATE: YYYY-MM-DD or an ISO date and time "
                 "(2023-06-01T18:00), compared with the camera's local clock."),
    click.option("--before", type=_Checked("date", _before), default=None, metavar="DATE",
                 help="Only photos taken at or before DATE; a date alone includes that whole "
                 "day (--before 2023-12-31 keeps Dec 31)."),
    click.option("--camera", default=None, metavar="TEXT",
                 help="Only photos whose camera make or model contains TEXT (any case), "
                 "e.g. Pixel."),
    click.option("--folder", default=None, metavar="DIR",
                 help="Only photos in DIR or in a folder below it."),
    click.option("--near", type=_Checked("place", _near), default=None, metavar="LAT,LON,R",
                 help="Only photos taken within R of the point (GPS in the photo's EXIF); R in "
                 "km or m, e.g. 48.85,2.35,20km."),
    click.option("--format", "formats", type=_Checked("formats", _formats), default=None,
                 metavar="LIST", help="Only these file formats, comma-separated: jpeg, png, "
                 "webp, heic, avif, tiff, gif, bmp."),
    click.option("--min-score", type=click.FloatRange(-1.0, 1.0), default=None, metavar="X",
                 help="Drop hits whose cosine score is below X (-1 to 1), e.g. 0.22."),
    click.option("--sort", type=click.Choice(SORT_CHOICES), default="score", show_default=True,
                 help="Order of the hits: by score, or by capture date (newest first; photos "
                 "without a date last)."),
)


def filter_options(function: Callable) -> Callable:
    """The filter options above, for `search` and `similar`."""
    for option in reversed(_OPTIONS):
        function = option(function)
    return function


def build_filter(after, before, camera, folder, near, formats):
    """The SearchFilter of the parsed options, None when none is given; a contradiction between
    options (after later than before) exits with status 2."""
    from searchengine.query.filters import SearchFilter

    if all(value is None for value in (after, before, camera, folder, near, formats)):
        return None
    try:
        return SearchFilter(after=after, before=before, camera=camera, folder=folder,
                            near=near, formats=formats or ())
    except InvalidInputError as error:
        raise click.UsageError(str(error)) from None


def filter_params(filters, min_score: float | None, sort: str) -> dict:
    """The API's query parameters for the same filter (`serve` answering a CLI search)."""
    params: dict = {}
    if filters is not None:
        filters = filters.checked()
        if filters.after is not None:
            params["after"] = filters.after.isoformat()
        if filters.before is not None:
            params["before"] = filters.before.isoformat()
        if filters.camera is not None:
            params["camera"] = filters.camera
        if filters.folder is not None:
            params["folder"] = filters.folder
        if filters.near is not None:
            near = filters.near
            params["near"] = f"{near.latitude!r},{near.longitude!r},{near.radius_km!r}km"
        if filters.formats:
            params["format"] = ",".join(filters.formats)
    if min_score is not None:
        params["min_score"] = repr(float(min_score))
    if sort != "score":
        params["sort"] = sort
    return params


def empty_line(matched: int | None, min_score: float | None) -> str:
    """Why a filtered search has no hits, as one line for a person."""
    if matched == 0:
        return "no hits: no photo passes the filters (0 left); widen them"
    if matched is not None and min_score is not None:
        return (f"no hits: {matched} photo{'s' if matched != 1 else ''} pass the filters, "
                f"none scores {min_score:g} or more (--min-score)")
    if min_score is not None:
        return f"no hits: no photo scores {min_score:g} or more (--min-score)"
    return "no hits"
