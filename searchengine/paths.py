"""How the catalog names a file, stores names that are not valid UTF-8, and shows them.

The rule (`catalog_path`): a catalogued path is absolute, with `~` expanded and `.`, `..` and
repeated slashes removed by text alone (`os.path.abspath`); symbolic links are kept, never
resolved. So a photo reached through a linked folder is catalogued under the link's name, and
`a/../b` names the same row as `b` wherever it is written or looked up. Every place that stores
or looks up a path (ingest roots and scans, `Engine.remove`, `similar PATH`, benchmarks, the
server's media check) goes through this one function.

File names are bytes on Linux; Python decodes them with `surrogateescape` (`os.fsdecode`), so a
byte that is not UTF-8 (0xE9 in a Latin-1 `café.jpg`) becomes the lone surrogate U+DCE9. Such a
str opens the file but cannot be encoded as UTF-8, which SQLite, PostgreSQL and JSON need:
- in the catalog, `to_stored` / `from_stored` swap each surrogate for a two-character stand-in
  (and escape the stand-in's lead character itself). The code is per character and prefix-free,
  so equality, `IN` and prefix (`LIKE 'root/%'`) queries mean the same on stored text;
- for people, `display_path` shows the undecodable bytes as `\\xe9` (as `ls -b` does);
- for scripts, `path_bytes` gives the exact name as base64 where it is not UTF-8 (the JSON
  `path_bytes` field, after ripgrep's `{"bytes": base64}` for arbitrary data).
"""

from __future__ import annotations

import base64
import os
import re

_LEAD = "\U0010fffd"  # last private-use code point: never in a real name, in practice
_SURROGATE_BASE = 0xF0000  # surrogate U+D800+i is stored as _LEAD + chr(_SURROGATE_BASE + i)
_NEEDS_CODE = re.compile("[\ud800-\udfff\U0010fffd]")
_STORED_CODE = re.compile("\U0010fffd([\U0010fffd\U000f0000-\U000f07ff])")
_SURROGATES = re.compile("[\ud800-\udfff]")


def catalog_path(path: str | bytes | os.PathLike) -> str:
    """The absolute path string under which the catalog stores (and finds) `path`.

    `~` is expanded and the path normalised lexically (`os.path.abspath`); links are not resolved.
    Bytes are decoded as the file system does (`os.fsdecode`, undecodable bytes kept as surrogates).
    """
    return os.path.abspath(os.path.expanduser(os.fsdecode(path)))


def to_stored(path: str) -> str:
    """`path` as valid Unicode text for the catalog; `from_stored` inverts it exactly."""
    if not _NEEDS_CODE.search(path):
        return path
    return _NEEDS_CODE.sub(_encode_char, path)


def from_stored(text: str) -> str:
    """The path that `to_stored` turned into `text`."""
    if _LEAD not in text:
        return text
    return _STORED_CODE.sub(_decode_pair, text)


def _encode_char(match: re.Match) -> str:
    char = match.group()
    if char == _LEAD:
        return _LEAD + _LEAD
    return _LEAD + chr(_SURROGATE_BASE + ord(char) - 0xD800)


def _decode_pair(match: re.Match) -> str:
    code = match.group(1)
    return _LEAD if code == _LEAD else chr(0xD800 + ord(code) - _SURROGATE_BASE)


def display_path(path: str) -> str:
    """`path` printable as UTF-8: each byte that is not UTF-8 shown as `\\xNN`, the rest as is."""
    return _SURROGATES.sub(_escape_char, path)


def _escape_char(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def path_bytes(path: str) -> str | None:
    """The exact name as base64 of its bytes where it is not valid UTF-8, else None."""
    if not _SURROGATES.search(path):
        return None
    # surrogatepass: a surrogate that no file system byte made is kept as its UTF-8 form
    raw = path.encode("utf-8", "surrogateescape" if _only_bytes(path) else "surrogatepass")
    return base64.b64encode(raw).decode("ascii")


def _only_bytes(path: str) -> bool:
    return all(0xDC80 <= ord(c) <= 0xDCFF for c in _SURROGATES.findall(path))


def path_fields(path: str, key: str = "path") -> dict[str, str]:
    """JSON fields for a path: `{key: display_path}`, plus `{key}_bytes` where not UTF-8."""
    raw = path_bytes(path)
    return {key: display_path(path)} | ({f"{key}_bytes": raw} if raw is not None else {})
