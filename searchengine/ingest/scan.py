"""The driver's stage: walk the roots for image files and compare them with the catalog.

Nothing here touches the model or the pixels: `plan` says which files to decode and embed,
which are gone, and which are already known to be bad, from names, sizes and times alone.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

from searchengine.catalog import Catalog, Skip, StoredFile
from searchengine.errors import InvalidInputError
from searchengine.exif import METADATA_VERSION
from searchengine.paths import catalog_path, display_path
from searchengine.settings import IngestSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileStat:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Plan:
    """What an `index` run will do: files to decode and embed, files gone from disk."""

    to_embed: list[FileStat]
    vanished: list[str]
    unchanged: int
    unreadable: list[Skip] = field(default_factory=list)
    # unchanged files whose metadata columns are from an older extraction (a home from before
    # revision 0004): their headers are read again, nothing is embedded (`ingest.metadata`)
    refresh: list[StoredFile] = field(default_factory=list)


def check_roots(paths: list[Path]) -> list[Path]:
    """Absolute, existing roots, named as the catalog names paths (`paths.catalog_path`); a missing
    one is an error before anything is touched."""
    if not paths:
        raise InvalidInputError("give at least one file or folder to index")
    roots = []
    for path in paths:
        resolved = Path(catalog_path(path))
        if not resolved.exists():
            raise InvalidInputError(f"{path} does not exist; give an existing file or folder")
        roots.append(resolved)
    return roots



def scan(roots: list[Path], settings: IngestSettings) -> tuple[dict[str, FileStat], list[Skip]]:
    """Walk `roots` (files or folders) for image files by extension.

    Returns path -> FileStat for every image file found, and Skips for folders or files that
    could not be read (unreadable folders, broken or looping symbolic links, devices, pipes).
    Symbolic links to folders are followed only when settings say so, and then each real folder
    is walked once (no cycles). Folders are walked with an explicit stack, so depth is unbounded.
    """
    found: dict[str, FileStat] = {}
    problems: list[Skip] = []
    extensions = tuple(e.lower() for e in settings.extensions)
    for root in roots:
        if not root.is_dir():
            _add_file(str(root), found, problems)
            continue
        for path in _image_files(str(root), extensions, settings.follow_symlinks, problems):
            _add_file(path, found, problems)
    return found, problems


def _image_files(
    root: str, extensions: tuple[str, ...], follow_symlinks: bool, problems: list[Skip]
) -> Iterator[str]:
    """Paths of non-hidden files ending in `extensions` under the folder `root`, in the order of
    a sorted top-down `os.walk` (a folder's files, then each sub-folder in name order); hidden
    folders are skipped and unreadable ones recorded in `problems`."""
    walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of folders met, when following links
    if follow_symlinks:
        walked.add(_identity(os.stat(root)))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Skip(folder, 0, 0, f"unreadable folder: {error.strerror}"))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_folder(entry):
                if _walk_into(entry, follow_symlinks, walked):
                    subfolders.append(entry.path)
            elif entry.name.lower().endswith(extensions):
                yield entry.path
        stack.extend(reversed(subfolders))  # the first sub-folder is walked next


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links: a link to a folder is a folder, never a file
    except OSError:  # a link loop or an unreadable target: looked at as a file
        return False


def _walk_into(entry: os.DirEntry, follow_symlinks: bool, walked: set[tuple[int, int]]) -> bool:
    if not follow_symlinks:
        return not entry.is_symlink()
    try:
        identity = _identity(entry.stat())
    except OSError:
        return False
    if identity in walked:
        log.debug("%s: a folder already walked (through a link); not walked again", entry.path)
        return False
    walked.add(identity)
    return True


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _add_file(path: str, found: dict[str, FileStat], problems: list[Skip]) -> None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        target = _link_target(path)
        if target is not None:
            problems.append(Skip(path, 0, 0, f"broken symbolic link to {target}"))
        return  # else vanished between listing and stat: nothing to index, nothing to record
    except OSError as error:
        reason = (
            f"symbolic link loop (through {_link_target(path)})"
            if error.errno == errno.ELOOP
            else f"unreadable: {error.strerror}"
        )
        problems.append(Skip(path, 0, 0, reason))
        return
    if not S_ISREG(stat.st_mode):  # a named pipe or device would block the reader forever
        target = _link_target(path)
        link = f"symbolic link to {target}, " if target is not None else ""
        problems.append(
            Skip(path, 0, stat.st_mtime_ns, f"not a regular file ({link}{_kind(stat.st_mode)})")
        )
        return
    found[path] = FileStat(path, stat.st_size, stat.st_mtime_ns)


def _link_target(path: str) -> str | None:
    """Where the symbolic link `path` points (printable), or None when it is not a link."""
    try:
        return display_path(os.readlink(path))
    except OSError:
        return None


def _kind(mode: int) -> str:
    kinds = ((S_ISDIR, "a folder"), (S_ISFIFO, "a named pipe"), (S_ISCHR, "a character device"),
             (S_ISBLK, "a block device"), (S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def plan(
    catalog: Catalog, model_id: int, roots: list[Path], settings: IngestSettings
) -> tuple[Plan, int]:
    """Compare the disk under `roots` with the catalog for one model. Returns (plan, scanned)."""
    on_disk, unreadable = scan(roots, settings)
    root_strings = [str(r) for r in roots]
    stored = catalog.files_under(root_strings)
    skipped = catalog.skipped_under(root_strings)
    have_vector = set(catalog.vector_ids("image", model_id).tolist())
    to_embed: list[FileStat] = []
    refresh: list[StoredFile] = []
    unchanged = 0
    for path, stat in on_disk.items():
        old: StoredFile | None = stored.get(path)
        if (
            old is not None
            and (old.size, old.mtime_ns) == (stat.size, stat.mtime_ns)
            and old.id in have_vector
        ):
            unchanged += 1
            if (old.metadata_version or 0) < METADATA_VERSION:
                refresh.append(old)
            continue
        known_bad = skipped.get(path)
        if known_bad is not None and (known_bad.size, known_bad.mtime_ns) == (
            stat.size,
            stat.mtime_ns,
        ):
            unchanged += 1
            continue
        to_embed.append(stat)
    vanished = [p for p in stored if p not in on_disk]
    vanished += [p for p in skipped if p not in on_disk]
    return Plan(to_embed, vanished, unchanged, unreadable, refresh), len(on_disk)
