"""A home folder: its catalog, who may write to it, and what opening it made.

Only commands that build a home (`index`, `add-texts`) create one; a reader opening a missing
home is told to index first. Every writer holds the home's lock (`catalog.lock.HomeLock`) for
the length of its command, so two writers never interleave; readers never take it.

A home's catalog is its own SQLite file, or a database named by URL (PostgreSQL): the index
files stay in the folder either way. A home serves one catalog: a folder that has its own file
refuses a URL, and a writer records a URL's catalog in `catalog.json` (without its password),
so that opening the folder without the URL says where its catalog is. Index files name the
catalog they were built from (`Catalog.identity`) and are rebuilt when read against another.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from searchengine.catalog import Catalog
from searchengine.catalog.lock import LOCK_NAME, HomeLock
from searchengine.catalog.store import CATALOG_NAME
from searchengine.errors import CatalogError, HomeBusyError, InvalidInputError, NotIndexedError

log = logging.getLogger(__name__)
RECORD_NAME = "catalog.json"  # where a home records the URL of a catalog it does not hold


@dataclass
class Home:
    """An opened home: its folder, its catalog, and the writer lock while a write runs."""

    path: Path
    catalog: Catalog
    lock_timeout: float = 0.0  # seconds a write waits for another process writing to the home
    _lock: HomeLock | None = field(default=None, init=False, repr=False)
    _created: tuple[Path, ...] = field(default=(), init=False, repr=False)
    _catalog_file: tuple[int, int] | None = field(default=None, init=False, repr=False)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        create: bool = True,
        catalog_url: str | None = None,
        lock_timeout: float = 0.0,
    ) -> Home:
        """Open the folder `path` and its catalog (upgraded to the newest schema).

        `create`: make the home when it has no catalog yet; what this call made is removed again
        on `close` while it holds nothing. Without it a missing home is a NotIndexedError and
        nothing is made. `catalog_url`: the catalog in a database instead of the home's SQLite
        file (`sqlite:///PATH` or `postgresql+psycopg://USER@HOST/DB`); refused for a folder
        that has its own file. Without it, a folder whose writers recorded a URL says so.
        """
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise InvalidInputError(f"home {path} is a file; give a folder")
        if catalog_url:
            return cls._open_url(path, catalog_url, create=create, lock_timeout=lock_timeout)
        catalog_file = path / CATALOG_NAME
        created: tuple[Path, ...] = ()
        if not catalog_file.is_file():
            recorded = _recorded_url(path)
            if recorded is not None:
                raise CatalogError(
                    f"the catalog of the home {path} is {recorded} ({RECORD_NAME}); give it with "
                    "--catalog URL or SEARCHENGINE_CATALOG (the password too, or in PGPASSWORD "
                    "or ~/.pgpass)"
                )
            if not create:
                raise NotIndexedError(
                    f"no home at {path}; run `searchengine index FOLDER --home {path}` first"
                )
            created = (catalog_file,) if path.is_dir() else (catalog_file, path)
        catalog = Catalog.in_home(path)
        home = cls(path=path, catalog=catalog, lock_timeout=lock_timeout)
        home._created = created
        home._catalog_file = _file_identity(catalog_file)
        return home

    @classmethod
    def _open_url(cls, path: Path, url: str, *, create: bool, lock_timeout: float) -> Home:
        """A home whose catalog is the database at `url`. Its folder holds only index files:
        a reader of a folder that is missing builds them in memory from the catalog; a writer
        makes it (removed again on `close` while it stays empty)."""
        if (path / CATALOG_NAME).is_file():
            raise CatalogError(
                f"the home {path} has a catalog of its own ({CATALOG_NAME}); a home serves one "
                "catalog: give the catalog at the URL a home of its own (another --home)"
            )
        catalog = Catalog(url)
        home = cls(path=path, catalog=catalog, lock_timeout=lock_timeout)
        if create and not (path / RECORD_NAME).exists():  # a first write here
            record = path / RECORD_NAME
            home._created = (record,) if path.is_dir() else (record, path)
        return home

    def close(self) -> None:
        try:
            if self._created and self._lock is None:
                self._remove_unused()
        finally:
            self.catalog.close()

    @property
    def writing_now(self) -> bool:
        return self._lock is not None

    @contextlib.contextmanager
    def writing(self, command: str) -> Iterator[bool]:
        """Hold the home's writer lock while a write runs (reentrant): yields True when this call
        took it, False inside a write that holds it already. Raises HomeBusyError (after
        `lock_timeout` seconds) while another process writes here."""
        if self._lock is not None:
            yield False
            return
        if self.catalog.home is None:  # the folder of a catalog kept elsewhere
            self.path.mkdir(parents=True, exist_ok=True)
        lock = HomeLock(self.path, command)
        lock.acquire(self.lock_timeout)
        self._lock = lock
        try:
            if self._catalog_file is not None and (
                _file_identity(self.path / CATALOG_NAME) != self._catalog_file
            ):
                raise CatalogError(
                    f"the catalog of {self.path} was removed or replaced while this command "
                    "started; run it again"
                )
            if self.catalog.home is None:
                self._record_url()
            yield True
        finally:
            self._lock = None
            lock.release()

    def _record_url(self) -> None:
        """Write the catalog's URL (no password) to the folder, once: opening the folder without
        it then says where the catalog is."""
        shown = self.catalog.shown_url
        if _recorded_url(self.path) != shown:
            (self.path / RECORD_NAME).write_text(json.dumps({"catalog": shown}) + "\n")

    def _remove_unused(self) -> None:
        """Remove what `open` made when nothing was stored; only while no one writes here."""
        if self.catalog.home is None:
            self._remove_unused_folder()
            return
        lock = HomeLock(self.path, "index")
        try:
            lock.acquire()
        except (HomeBusyError, CatalogError):
            return  # another process writes to this home now: it is in use, keep it
        try:
            try:
                empty = self.catalog.is_empty()
            except CatalogError:
                empty = False  # unreadable now: keep it; the error that matters was raised before
            if not empty:
                return
            self.catalog.close()
            catalog_file = self._created[0]
            for suffix in ("", "-wal", "-shm", "-journal"):
                catalog_file.with_name(catalog_file.name + suffix).unlink(missing_ok=True)
            (self.path / LOCK_NAME).unlink(missing_ok=True)  # a waiting writer then sees the
            # catalog gone (`writing` compares the file's identity) and stops
            for folder in (self.path / "vectors", *self._created[1:]):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
            self._created = ()
        finally:
            lock.release()


    def _remove_unused_folder(self) -> None:
        """What the first write to the folder of a catalog kept elsewhere made (its lock, its
        record, the folder itself), when it wrote no index file (it failed before): nothing in
        the catalog depends on them."""
        if not self.path.is_dir():
            return
        lock = HomeLock(self.path, "index")
        try:
            lock.acquire()
        except (HomeBusyError, CatalogError):
            return
        try:
            if (self.path / "vectors").is_dir() and any((self.path / "vectors").iterdir()):
                return  # index files were written: the home is in use
            with contextlib.suppress(OSError):
                (self.path / "vectors").rmdir()
            (self.path / RECORD_NAME).unlink(missing_ok=True)
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            for folder in self._created[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
            self._created = ()
        finally:
            lock.release()


def _recorded_url(path: Path) -> str | None:
    """The catalog URL a home records (`RECORD_NAME`), None when it records none."""
    try:
        return str(json.loads((path / RECORD_NAME).read_text())["catalog"])
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CatalogError(
            f"{path / RECORD_NAME} cannot be read ({error}); it names the home's catalog: "
            "delete it and give the catalog with --catalog URL"
        ) from error


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it is missing: tells a replaced file apart."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)
