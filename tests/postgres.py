"""A throwaway PostgreSQL server for the tests: Debian's binaries (`make test` installs the
`postgresql` package), started once a session in a temporary folder and stopped at its end.

PostgreSQL refuses to run as root: as root the server runs as the `postgres` user (made by the
Debian package) on a folder it owns; as anyone else it runs as that user. Clients reach it on a
Unix socket in that folder (trust: no password) and on 127.0.0.1 at a free port (a password, so
that a wrong one can be tested). Every test gets a database of its own (`new_database`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

USER = "searchengine"
PASSWORD = "test-secret"  # for TCP connections; the socket trusts the local user
RUN_AS_WHEN_ROOT = "postgres"


def server_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's newest /usr/lib/postgresql/N/bin, else PATH."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parent.parent.name) if Path(path).parent.parent.name
        .isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found and shutil.which("initdb") else None


def why_no_server() -> str | None:
    """Why no test server can run here (a sentence), or None when one can."""
    if server_binaries() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl): `make test` installs Debian's "
                "`postgresql` package as root; elsewhere `sudo apt-get install postgresql`")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'searchengine[postgres]'"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(RUN_AS_WHEN_ROOT)
        except KeyError:
            return f"running as root and there is no `{RUN_AS_WHEN_ROOT}` user to run the server"
    return None


@dataclass
class PostgresServer:
    """A running server; `url(database)` for clients, `new_database()` for a fresh one."""

    folder: Path
    port: int
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres", *, tcp: bool = False,
            password: str | None = None) -> str:
        """A psycopg URL: the Unix socket (trusted), or TCP with `password`."""
        if tcp:
            secret = f":{password}" if password is not None else ""
            return f"postgresql+psycopg://{USER}{secret}@127.0.0.1:{self.port}/{database}"
        return f"postgresql+psycopg://{USER}@/{database}?host={self.folder}&port={self.port}"

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.folder), port=self.port, user=USER,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(sql)

    def new_database(self) -> str:
        """Create an empty database; returns its (socket) URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {database_name(url)} WITH (FORCE)")

    def stop(self) -> None:
        _run([self._bin("pg_ctl"), "stop", "-D", self.data, "-m", "immediate", "-w"],
             check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _bin(name: str) -> str:
        return str(server_binaries() / name)  # type: ignore[operator]


def database_name(url: str) -> str:
    """The database a URL names."""
    from sqlalchemy.engine import make_url

    return str(make_url(url).database)


def start_server() -> PostgresServer:
    """initdb and start a server in a new temporary folder (a few seconds)."""
    folder = Path(tempfile.mkdtemp(prefix="searchengine-pg-"))
    folder.chmod(0o755)  # clients reach the socket inside; the data folder stays private
    server = PostgresServer(folder, _free_port())
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, user=RUN_AS_WHEN_ROOT)
        shutil.chown(password_file, user=RUN_AS_WHEN_ROOT)
    _run([PostgresServer._bin("initdb"), "-D", server.data, "-U", USER, "--no-sync",
          "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}",
          "--encoding=UTF8", "--locale=C"])
    options = (f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
               "-c shared_buffers=32MB")
    _run([PostgresServer._bin("pg_ctl"), "start", "-D", server.data, "-w", "-t", "60",
          "-l", folder / "server.log", "-o", options])
    return server


def _run(command: list, *, check: bool = True) -> None:
    args = [str(part) for part in command]
    if os.geteuid() == 0:
        args = ["runuser", "-u", RUN_AS_WHEN_ROOT, "--", *args]
    done = subprocess.run(args, capture_output=True, text=True, check=False, cwd="/")  # noqa: S603
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
