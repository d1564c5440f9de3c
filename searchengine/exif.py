"""Capture metadata from a photo's EXIF block, read through Pillow's `getexif` / `get_ifd`.

What the catalog keeps for filters (`query.filters`): the capture time (DateTimeOriginal, the
camera's local wall-clock time, with OffsetTimeOriginal's UTC offset when the camera wrote one),
camera make and model, lens, and GPS position in decimal degrees. EXIF is written by every
program that ever touched a file, so anything may sit in a tag: a value of the wrong type, a
rational with a zero denominator, an angle of 10^30 degrees. Each field is read on its own and a
bad one is None; nothing here raises for a value. There is no fallback: a photo without
DateTimeOriginal has no capture time (neither EXIF's DateTime, which editors rewrite, nor the
file's modification time stands in for it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from numbers import Real

EXIF_IFD = 0x8769
GPS_IFD = 0x8825
MAKE = 0x010F
MODEL = 0x0110
DATETIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011
LENS_MAKE = 0xA433
LENS_MODEL = 0xA434
GPS_LATITUDE_REF, GPS_LATITUDE = 1, 2
GPS_LONGITUDE_REF, GPS_LONGITUDE = 3, 4
METADATA_VERSION = 1
"""The extraction the catalog's metadata columns come from (`Media.metadata_version`): a row of
an older one (NULL: from before revision 0004) is read again by the next `index`, without
embedding."""
MAX_TEXT = 200  # characters kept of a make, model or lens (a tag may hold megabytes)
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class Capture:
    """What a photo's EXIF says about its taking; every field None when absent or malformed.

    `taken_at` is naive: the camera's local time as recorded. `taken_offset` is its offset
    from UTC as EXIF writes it ("+02:00"), when recorded (EXIF 2.31 and later)."""

    taken_at: datetime | None = None
    taken_offset: str | None = None
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    latitude: float | None = None  # decimal degrees, north positive, in [-90, 90]
    longitude: float | None = None  # decimal degrees, east positive, in [-180, 180]


def read_capture(exif: Mapping) -> Capture:
    """The capture metadata of a Pillow `Image.Exif` (`image.getexif()`). Never raises for a
    malformed value (that field is None); a sub-IFD Pillow cannot read counts as empty."""
    sub = _ifd(exif, EXIF_IFD)
    gps = _ifd(exif, GPS_IFD)
    taken = parse_exif_time(sub.get(DATETIME_ORIGINAL))
    latitude = _coordinate(gps.get(GPS_LATITUDE), gps.get(GPS_LATITUDE_REF), "N", "S", 90.0)
    longitude = _coordinate(gps.get(GPS_LONGITUDE), gps.get(GPS_LONGITUDE_REF), "E", "W", 180.0)
    if latitude is None or longitude is None:  # half a position is no position
        latitude = longitude = None
    return Capture(
        taken_at=taken,
        taken_offset=_offset(sub.get(OFFSET_TIME_ORIGINAL)) if taken else None,
        make=text_tag(exif.get(MAKE)),
        model=text_tag(exif.get(MODEL)),
        lens=text_tag(sub.get(LENS_MODEL)),
        latitude=latitude,
        longitude=longitude,
    )


def _ifd(exif: Mapping, tag: int) -> Mapping:
    get_ifd = getattr(exif, "get_ifd", None)
    if get_ifd is None:
        return {}
    try:
        found = get_ifd(tag)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, EOFError,
            OverflowError, ZeroDivisionError):  # a broken offset or entry in the block
        return {}
    return found if isinstance(found, Mapping) else {}


def parse_exif_time(value: object) -> datetime | None:
    """"YYYY:MM:DD HH:MM:SS" (EXIF's form; NULs and blanks around it ignored) as a naive
    datetime, else None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value.strip("\x00 ").strip()[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def _offset(value: object) -> str | None:
    """An EXIF offset "+HH:MM" within UTC-14:00..+14:00, else None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _OFFSET.match(value.strip("\x00 ").strip())
    if match is None:
        return None
    hours, minutes = int(match.group(2)), int(match.group(3))
    if minutes >= 60 or hours * 60 + minutes > 14 * 60:
        return None
    return f"{match.group(1)}{hours:02d}:{minutes:02d}"


def text_tag(value: object) -> str | None:
    """An ASCII tag as clean text (NULs and blanks trimmed, at most `MAX_TEXT` characters)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", " ").strip()
    return text[:MAX_TEXT] or None


def _number(value: object) -> float | None:
    """A finite float from an EXIF number (Pillow's IFDRational, int, float), else None (a zero
    denominator reads as NaN in Pillow)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    try:
        number = float(value)
    except (ValueError, TypeError, OverflowError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _coordinate(
    value: object, ref: object, positive: str, negative: str, limit: float
) -> float | None:
    """Degrees, minutes, seconds (three rationals; a single number is taken as degrees) and
    their reference letter as signed decimal degrees; None when any part is malformed or the
    result lies beyond `limit`."""
    if isinstance(value, (tuple, list)):
        parts = [_number(part) for part in value[:3]]
        numbers = [part for part in parts if part is not None and part >= 0]
        if not numbers or len(numbers) != len(parts):
            return None
        degrees = sum(part / 60**place for place, part in enumerate(numbers))
    else:
        single = _number(value)
        if single is None:
            return None
        degrees = single
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    letter = ref.strip("\x00 ").strip().upper() if isinstance(ref, str) else ""
    if letter == negative:
        degrees = -degrees
    elif letter not in (positive, ""):
        return None
    return degrees if math.isfinite(degrees) and abs(degrees) <= limit else None
