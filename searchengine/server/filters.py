"""The filter parameters of `/api/search` and `/api/similar`: the CLI's filter options, as query
parameters, checked by the library's own parsers (`query.filters`); a bad value is a 422 with
the library's message, in the API's error shape."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from fastapi import Depends, Query

from searchengine.errors import InvalidInputError
from searchengine.query.filters import (
    FORMATS,
    SearchFilter,
    parse_formats,
    parse_near,
    parse_time,
)
from searchengine.server.errors import ApiError

MAX_FILTER_CHARS = 4096  # a folder path, a camera text


class Refinements(NamedTuple):
    """What limits and orders a search's hits: `Engine.search`'s filters, min_score, sort."""

    filters: SearchFilter | None = None
    min_score: float | None = None
    sort: str = "score"

    def as_kwargs(self) -> dict:
        return {"filters": self.filters, "min_score": self.min_score, "sort": self.sort}


async def get_refinements(
    after: Annotated[str | None, Query(
        description="Only photos taken at or after this moment of the camera's local clock: "
        "YYYY-MM-DD or an ISO date and time without a time zone.",
        examples=["2023-01-01", "2023-06-01T18:00"], max_length=40)] = None,
    before: Annotated[str | None, Query(
        description="Only photos taken at or before this moment; a date alone includes its "
        "whole day (2023-12-31 keeps Dec 31).", examples=["2023-12-31"], max_length=40)] = None,
    camera: Annotated[str | None, Query(
        description="Only photos whose camera make or model contains this text (any case).",
        examples=["pixel"], max_length=MAX_FILTER_CHARS)] = None,
    folder: Annotated[str | None, Query(
        description="Only photos in this folder (an absolute path as indexed) or below it.",
        examples=["/home/me/Pictures/family"], max_length=MAX_FILTER_CHARS)] = None,
    near: Annotated[str | None, Query(
        description="Only photos taken within a radius of a point (GPS in the photo's EXIF): "
        "LAT,LON,RADIUS with the radius in km (default) or m.",
        examples=["48.85,2.35,20km", "40.7,-74.0,500m"], max_length=100)] = None,
    formats: Annotated[str | None, Query(
        alias="format", description="Only these file formats, comma-separated; known: "
        f"{', '.join(FORMATS)}.", examples=["jpeg,heic"], max_length=200)] = None,
    min_score: Annotated[float | None, Query(
        ge=-1.0, le=1.0, description="Drop hits whose cosine score is below this, in [-1, 1].",
        examples=[0.22])] = None,
    sort: Annotated[str, Query(
        pattern="^(score|date)$", description="Order of the hits: `score` (best first) or "
        "`date` (capture time, newest first; photos without one last).")] = "score",
) -> Refinements:
    """The request's filter, threshold and order; 422 for a value the library refuses."""
    if folder is not None and not folder.strip().startswith(("/", "~")):
        raise ApiError(422, f"folder {folder!r} is relative; give the absolute path of a folder "
                            "as it was indexed, e.g. /home/me/Pictures/family")
    try:
        filters = None
        if any(value is not None for value in (after, before, camera, folder, near, formats)):
            filters = SearchFilter(
                after=parse_time(after) if after is not None else None,
                before=parse_time(before, end=True) if before is not None else None,
                camera=camera, folder=folder,
                near=parse_near(near) if near is not None else None,
                formats=parse_formats(formats))
            filters = filters if filters.active else None
    except InvalidInputError as error:
        raise ApiError(422, str(error)) from None
    return Refinements(filters, min_score, sort)


Refined = Annotated[Refinements, Depends(get_refinements)]
