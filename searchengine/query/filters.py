"""Search filters: which photos a search may answer with, checked once, the same everywhere.

    SearchFilter(after="2023-01-01", before="2023-12-31", camera="pixel",
                 folder="~/Pictures/family", near=(48.85, 2.35, 20), formats=("jpeg", "heic"))

A filter becomes the set of allowed media ids in the catalog (`catalog.filtering`), which the
vector search takes as its id selector (`index.search.search_space`): a search asked for k hits
returns k whenever k photos pass. Dates are compared with the capture time as the camera's
clock showed it (EXIF DateTimeOriginal, local time; see docs/search-filters.md): "photos of
2023" are those whose clock said 2023, whatever the time zone. A bound therefore carries no
time zone. A photo without a capture time passes no date bound; one without GPS no `near`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import NamedTuple, cast

from searchengine.errors import InvalidInputError
from searchengine.paths import catalog_path

SORTS = ("score", "date")
PHOTO_FIELDS = ("taken_at", "taken_offset", "camera", "gps", "width", "height", "folder")
"""The keys an image hit's JSON adds after its path (`results.PhotoInfo.as_dict`), in order."""
EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG), as the haversine distance uses it
MAX_RADIUS_KM = 20_037.5  # half the circumference: every point of the globe
# what --format takes -> the formats the catalog records (Pillow's names); MPO is the
# multi-picture JPEG of many cameras, HEIF is what pillow-heif calls .heic files
FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": ("JPEG", "MPO"),
    "jpg": ("JPEG", "MPO"),
    "png": ("PNG",),
    "webp": ("WEBP",),
    "heic": ("HEIF",),
    "heif": ("HEIF",),
    "avif": ("AVIF",),
    "tiff": ("TIFF",),
    "tif": ("TIFF",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "mpo": ("MPO",),
}
_RADIUS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(km|m)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Near:
    """A circle on the globe: its centre in decimal degrees and its radius in kilometres."""

    latitude: float
    longitude: float
    radius_km: float


class Conditions(NamedTuple):
    """A `SearchFilter`'s values after checking: bounds as datetimes (inclusive), the folder as
    the catalog names paths, the place as a `Near`, formats as the catalog's names."""

    after: datetime | None
    before: datetime | None
    camera: str | None
    folder: str | None
    near: Near | None
    formats: tuple[str, ...]


@dataclass(frozen=True)
class SearchFilter:
    """The photos a search may answer with; every condition given must hold (AND).

    - `after` / `before`: capture time bounds, both inclusive; a datetime, a date (`after`: its
      first instant, `before`: its whole day) or ISO text ("2023-12-31", "2023-12-31T18:00").
    - `camera`: text found, case-insensitively, in the camera's make or model ("pixel").
    - `folder`: a folder; photos in it and in every folder below it (the path as the catalog
      names it: `~` expanded, made absolute, links kept).
    - `near`: (latitude, longitude, radius in km), or the CLI's text "48.85,2.35,20km".
    - `formats`: names such as "jpeg", "heic" (`FORMATS`), or one comma-separated text.

    Values are checked and normalised here: InvalidInputError says what is wrong."""

    # given as any of these types; normalised on construction to those `checked` returns
    after: datetime | date | str | None = None
    before: datetime | date | str | None = None
    camera: str | None = None
    folder: str | os.PathLike | None = None
    near: Near | str | tuple[float, float, float] | None = None
    formats: tuple[str, ...] | list[str] | str = field(default=())  # ("JPEG", "MPO") once made

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        after = _bound(self.after, "after", end=False)
        before = _bound(self.before, "before", end=True)
        if after and before and after > before:
            raise InvalidInputError(
                f"after ({after.isoformat()}) is later than before ({before.isoformat()}): no "
                "photo can pass; swap them")
        set_(self, "after", after)
        set_(self, "before", before)
        if self.camera is not None:
            if not isinstance(self.camera, str):
                raise InvalidInputError("camera is text found in the camera's make or model")
            set_(self, "camera", self.camera.strip() or None)
        if self.folder is not None:
            if not isinstance(self.folder, (str, os.PathLike)) or not os.fspath(
                self.folder
            ).strip():
                raise InvalidInputError("folder is a folder path, e.g. ~/Pictures/family")
            set_(self, "folder", catalog_path(os.fspath(self.folder).strip()))
        set_(self, "near", parse_near(self.near) if self.near is not None else None)
        set_(self, "formats", parse_formats(self.formats))

    def checked(self) -> Conditions:
        """The normalised values, typed as they are after construction."""
        return Conditions(
            after=cast("datetime | None", self.after),
            before=cast("datetime | None", self.before),
            camera=self.camera,
            folder=cast("str | None", self.folder),
            near=cast("Near | None", self.near),
            formats=cast("tuple[str, ...]", self.formats),
        )

    @property
    def active(self) -> bool:
        """Whether any condition is set (an empty filter lets every photo pass)."""
        return any((self.after, self.before, self.camera, self.folder, self.near, self.formats))


def parse_time(text: str, *, end: bool = False) -> datetime:
    """A filter bound from ISO text: a date "2023-12-31" (its first instant, or with `end` its
    last: the whole day is included) or a date and time "2023-12-31T18:30[:00]" (also with a
    space). InvalidInputError for anything else, and for a time zone (capture times are the
    camera's local time; see the module docstring)."""
    text = text.strip() if isinstance(text, str) else text
    if not isinstance(text, str) or not text:
        raise InvalidInputError("a date is YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], e.g. 2023-12-31")
    if len(text) == 10:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise InvalidInputError(
                f"{text!r} is not a date; give YYYY-MM-DD, e.g. 2023-12-31") from None
        return datetime.combine(day, time.max if end else time.min)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{text!r} is not a date or date and time; give YYYY-MM-DD or "
            "YYYY-MM-DDTHH:MM[:SS], e.g. 2023-12-31 or 2023-12-31T18:30") from None
    if moment.tzinfo is not None:
        raise InvalidInputError(
            f"{text!r} has a time zone; give the time without one: capture times are compared "
            "as the camera's clock showed them (its local time)")
    return moment


def _bound(value: object, name: str, *, end: bool) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is not None:
            raise InvalidInputError(f"{name} has a time zone; give the camera's local time")
        return value
    if isinstance(value, date):
        return datetime.combine(value, time.max if end else time.min)
    if isinstance(value, str):
        return parse_time(value, end=end)
    raise InvalidInputError(f"{name} is a date, a datetime or ISO text, e.g. 2023-12-31")


def parse_near(value: object) -> Near:
    """A `Near` from itself, a (lat, lon, radius_km) sequence, or text "LAT,LON,RADIUS" where the
    radius ends in km (the default) or m: "48.85,2.35,20km", "48.85,2.35,500m". Latitude in
    [-90, 90], longitude in [-180, 180], radius above 0 and at most half the globe's circumference.
    """
    if isinstance(value, Near):
        latitude, longitude, radius = value.latitude, value.longitude, value.radius_km
    elif isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if len(parts) != 3:
            raise InvalidInputError(
                f"near {value!r}: give LAT,LON,RADIUS, e.g. 48.85,2.35,20km (radius in km or m)")
        latitude, longitude = (_degrees(part, value) for part in parts[:2])
        radius = _radius(parts[2], value)
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        latitude, longitude, radius = (_real(part, "near") for part in value)
    else:
        raise InvalidInputError("near is (latitude, longitude, radius_km) or 'LAT,LON,RADIUS'")
    if not -90.0 <= latitude <= 90.0:
        raise InvalidInputError(f"latitude {latitude:g} is outside the globe: give -90 to 90")
    if not -180.0 <= longitude <= 180.0:
        raise InvalidInputError(f"longitude {longitude:g} is outside the globe: give -180 to 180")
    if not 0.0 < radius <= MAX_RADIUS_KM:
        raise InvalidInputError(
            f"radius {radius:g} km: give a distance above 0 and at most {MAX_RADIUS_KM:g} km "
            "(half the globe), e.g. 20km or 500m")
    return Near(float(latitude), float(longitude), float(radius))


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name}: {value!r} is not a finite number")
    return float(value)


def _degrees(text: str, whole: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise InvalidInputError(
            f"near {whole!r}: {text!r} is not a number of degrees; give LAT,LON,RADIUS, "
            "e.g. 48.85,2.35,20km") from None
    return _real(number, "near")


def _radius(text: str, whole: str) -> float:
    match = _RADIUS.match(text)
    if match is None:
        raise InvalidInputError(
            f"near {whole!r}: the radius {text!r} is a distance in km or m, e.g. 20km or 500m")
    number = float(match.group(1))
    return number / 1000.0 if (match.group(2) or "km").lower() == "m" else number


def parse_formats(value: object) -> tuple[str, ...]:
    """The catalog format names (sorted, distinct) for format names given as one
    comma-separated text or a sequence ("jpeg,heic"); InvalidInputError lists the known ones."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    found: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise InvalidInputError(f"a format is a name such as jpeg; got {name!r}")
        key = name.strip().lower().lstrip(".")
        if not key:
            continue
        if key in FORMATS:
            found.update(FORMATS[key])
        elif key.upper() in {stored for group in FORMATS.values() for stored in group}:
            found.add(key.upper())  # a stored name as status shows it, e.g. HEIF
        else:
            raise InvalidInputError(
                f"unknown format {name.strip()!r}; known formats: {', '.join(FORMATS)}")
    return tuple(sorted(found))


def check_min_score(min_score: float | None) -> float | None:
    """A cosine threshold in [-1, 1], or None; InvalidInputError otherwise."""
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not (
        -1.0 <= min_score <= 1.0
    ):
        raise InvalidInputError(
            f"min score {min_score!r}: give a cosine between -1 and 1, e.g. 0.22")
    return float(min_score)


def check_sort(sort: str) -> str:
    """`sort` when it is one of SORTS; InvalidInputError listing them otherwise."""
    if sort not in SORTS:
        raise InvalidInputError(f"unknown sort {sort!r}; use one of {', '.join(SORTS)}")
    return sort


def haversine_km(
    latitude: float, longitude: float, latitudes, longitudes
):
    """Great-circle distances in km from one point to (n,) float64 arrays of points (degrees)."""
    import numpy as np

    lat1, lon1 = math.radians(latitude), math.radians(longitude)
    lat2, lon2 = np.radians(latitudes), np.radians(longitudes)
    a = (np.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def bounding_box(near: Near) -> tuple[float, float, list[tuple[float, float]]]:
    """A box holding the whole circle, for an indexed SQL prefilter: (lat_min, lat_max, the
    longitude ranges), two ranges where it crosses the antimeridian, [-180, 180] when it holds a
    pole."""
    span = math.degrees(near.radius_km / EARTH_RADIUS_KM)  # latitude degrees of the radius
    low, high = near.latitude - span, near.latitude + span
    if low <= -90.0 or high >= 90.0:
        return max(low, -90.0), min(high, 90.0), [(-180.0, 180.0)]
    # the widest longitude span of the circle (at the latitude where it touches its meridians)
    ratio = math.sin(math.radians(span)) / math.cos(math.radians(near.latitude))
    width = math.degrees(math.asin(min(1.0, ratio))) if ratio < 1.0 else 180.0
    west, east = near.longitude - width, near.longitude + width
    if width >= 180.0:
        return low, high, [(-180.0, 180.0)]
    if west < -180.0:
        return low, high, [(west + 360.0, 180.0), (-180.0, east)]
    if east > 180.0:
        return low, high, [(west, 180.0), (-180.0, east - 360.0)]
    return low, high, [(west, east)]
