"""Machinery of bench/faults.py: the real CLI in child processes, and a home's real state.

Nothing here trusts the engine's own account: a home's state is read straight from its SQLite
catalog (read-only) and its FAISS files, and a child's memory from the kernel (`wait4`'s
maximum resident set, the child and every descendant it reaped, and samples of /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TINY_MODEL = "se-tiny/random"
SECOND_MODEL = "se-scenes/random"  # the other offline architecture, for `use-model`
TIMEOUT = 600  # seconds any one command may take
TRACEBACK = "Traceback (most recent call last)"
# What a second writer may say when it is refused because another one holds the home.
# (SQLite's own "database is locked" is not one: that is an error.)
REFUSAL = re.compile(
    r"another\b.{0,60}\b(writer|index|process|command|searchengine|run)|\(pid \d+\)|"
    r"\bhome\b.{0,40}\block|\block\b.{0,40}\bhome\b|held by",
    re.IGNORECASE,
)
# A command a user could run to repair a home, as `check` might name it.
REPAIR_HINT = re.compile(r"--repair|searchengine (index|remove|check|add-texts|use-model)")


def cli_prefix() -> list[str]:
    """The installed `searchengine` console script of this interpreter's environment, else the
    same entry point through `python -c` (the same interpreter either way)."""
    script = Path(sys.executable).with_name("searchengine")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from searchengine.cli import cli; cli()"]


def child_env() -> dict[str, str]:
    """The environment of every child: offline, no inherited home, no terminal progress bars."""
    env = {k: v for k, v in os.environ.items() if k != "SEARCHENGINE_HOME"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Run:
    """One finished child: exit status (negative: killed by that signal), output, time, memory."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float = 0.0  # wait4: the peak RSS of the child or any descendant it reaped
    tree_rss_mb: float = 0.0  # the peak of sampled PSS sums over the live process group
    timed_out: bool = False
    memory_capped: bool = False

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.stderr or TRACEBACK in self.stdout

    @property
    def crashed(self) -> bool:
        """Anything but a clean exit or a clean one-line refusal: a traceback, a signal, a hang,
        memory over the cap."""
        return self.traceback or self.returncode < 0 or self.timed_out or self.memory_capped

    @property
    def refused(self) -> bool:
        """Exited non-zero without a traceback, saying that another writer holds the home."""
        return self.returncode > 0 and not self.crashed and bool(REFUSAL.search(self.message))

    @property
    def message(self) -> str:
        return (self.stderr.strip() or self.stdout.strip())[-600:]

    def json(self) -> dict | None:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None

    def brief(self) -> dict:
        return {
            "command": " ".join(self.args[:1]),
            "exit": self.returncode,
            "seconds": round(self.seconds, 2),
            "traceback": self.traceback,
            "message": self.message[-300:] if self.returncode else "",
        }


class Child:
    """A running `searchengine` command in its own process group (so a kill takes its workers)."""

    def __init__(self, args: list[object], *, cwd: Path | None = None, address_space_mb=None):
        self.args = [str(a) for a in args]
        self.start = time.perf_counter()
        self.out_path = _scratch_file("out")
        self.err_path = _scratch_file("err")

        def limit() -> None:  # runs in the child before exec
            if address_space_mb:
                size = int(address_space_mb) << 20
                resource.setrlimit(resource.RLIMIT_AS, (size, size))

        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                cli_prefix() + self.args,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=child_env(),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=limit if address_space_mb else None,
            )
        self.pid = self.process.pid
        self.tree_rss_mb = 0.0
        self._status: tuple[int, float] | None = None  # (returncode, max_rss_mb) once reaped

    def running(self) -> bool:
        """Reaps the child (with `wait4`, keeping its peak memory) once it has exited."""
        if self._status is not None:
            return False
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._status = (os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024)
        self.process.returncode = self._status[0]
        return False

    def sample_memory(self) -> float:
        """Resident MB of the whole process group now; the running maximum is kept."""
        now = process_group_rss_mb(self.pid)
        self.tree_rss_mb = max(self.tree_rss_mb, now)
        return now

    def kill(self) -> bool:
        """SIGKILL the whole group; True when the command was still running."""
        alive = self.running()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        return alive

    def wait(self, timeout: float, *, memory_cap_mb: float | None = None, poll: float = 0.02):
        """Wait for the exit (killing the group `timeout` s from now, or past `memory_cap_mb`);
        a Run."""
        timed_out = capped = False
        deadline = time.perf_counter() + timeout
        while self.running():
            if memory_cap_mb is not None and self.sample_memory() > memory_cap_mb:
                capped = True
                self.kill()
            elif time.perf_counter() > deadline:
                timed_out = True
                self.kill()
            time.sleep(poll)
        _reap_group(self.pid)
        returncode, max_rss = self._status or (-9, 0.0)
        run = Run(
            self.args,
            returncode,
            _read_text(self.out_path),
            _read_text(self.err_path),
            time.perf_counter() - self.start,
            max_rss_mb=round(max_rss, 1),
            tree_rss_mb=round(self.tree_rss_mb, 1),
            timed_out=timed_out,
            memory_capped=capped,
        )
        self.out_path.unlink(missing_ok=True)
        self.err_path.unlink(missing_ok=True)
        return run


def check_problems(run: Run) -> list[str]:
    """What `check --json` found out of step, one line per space; [] when it says all is well.
    A run that printed no report gives its message."""
    report = run.json()
    if not isinstance(report, dict) or "spaces" not in report:
        return [f"check exited {run.returncode}: {run.message[-300:]}"]
    problems = [
        f"{s.get('model')} {s.get('modality')}: catalog {s.get('catalog_count')}, index "
        f"{s.get('index_count')} ({s.get('missing')} missing, {s.get('extra')} extra, "
        f"{s.get('duplicates')} twice){', ' + s['problem'] if s.get('problem') else ''}"
        for s in report["spaces"]
        if not s.get("ok")
    ]
    if not problems and (report.get("ok") is not True or run.returncode != 0):
        problems.append(f"check says not ok (exit {run.returncode})")
    return problems


def run_cli(args: list[object], *, timeout: float = 600, **options) -> Run:
    """Run `searchengine ARGS...` to the end (or the timeout) and return what happened."""
    memory_cap_mb = options.pop("memory_cap_mb", None)
    return Child(args, **options).wait(timeout, memory_cap_mb=memory_cap_mb)


def process_group_rss_mb(pgid: int) -> float:
    """Memory of the live processes of a process group (Linux /proc), in MB: the sum of their
    proportional set sizes (forked decode workers share pages with their parent; a sum of RSS
    would count those pages once per process), else of their RSS."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            total += _kilobytes(f"/proc/{entry.name}/smaps_rollup", "Pss:") or _kilobytes(
                f"/proc/{entry.name}/status", "VmRSS:"
            )
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def _kilobytes(path: str, field: str) -> int:
    """The kB figure of the line starting with `field` in a /proc file; 0 when absent."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reap_group(pgid: int) -> None:
    """Kill whatever the child left in its group (orphaned decode workers) before moving on."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


_SCRATCH = Path(os.environ.get("TMPDIR", "/tmp"))


def _scratch_file(kind: str) -> Path:
    return _SCRATCH / f"searchengine-faults-{os.getpid()}-{time.monotonic_ns()}.{kind}"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


# -- a home's state, read without the engine ---------------------------------------------------


@dataclass(frozen=True)
class HomeState:
    """What a home holds, read from its catalog file and its index files."""

    images: frozenset[tuple[str, str]]  # (path, model spec) of every stored image vector
    texts: frozenset[tuple[str, str, str]]  # (text set, text, model spec) of every text vector
    media: frozenset[str]  # every catalogued path
    skipped: dict[str, str]  # path -> reason
    default_model: str | None
    disagreements: list[str]  # catalog and index files out of step, in words
    temp_files: list[str]  # *.tmp anywhere under the home
    error: str | None = None  # the catalog could not be read at all

    def images_of(self, model: str) -> set[str]:
        return {path for path, spec in self.images if spec == model}


def path_text(value: object) -> str:
    """A catalogued path as text, whether the catalog stores it as text or as bytes."""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return str(value)


def read_state(home: Path) -> HomeState:
    """The home's real state. A missing catalog is an empty home."""
    temps = sorted(str(p.relative_to(home)) for p in home.rglob("*.tmp")) if home.exists() else []
    catalog = home / "catalog.sqlite"
    if not catalog.exists():
        return HomeState(frozenset(), frozenset(), frozenset(), {}, None, [], temps)
    try:
        with _read_only(catalog) as db:
            images = _rows(db, "SELECT m.path, s.spec FROM image_embeddings e JOIN media m ON "
                               "m.id = e.media_id JOIN models s ON s.id = e.model_id")
            texts = _rows(db, "SELECT t.text_set, t.text, s.spec FROM text_embeddings e JOIN "
                              "texts t ON t.id = e.text_id JOIN models s ON s.id = e.model_id")
            media = _rows(db, "SELECT path FROM media")
            skipped = _rows(db, "SELECT path, reason FROM skipped_files")
            default = _rows(db, "SELECT value FROM settings WHERE key = 'default_model'")
            disagreements = _disagreements(db, home)
    except sqlite3.Error as error:  # counted as a disagreement: nothing can be checked
        problem = f"catalog unreadable: {error}"
        return HomeState(frozenset(), frozenset(), frozenset(), {}, None, [problem], temps, problem)
    return HomeState(
        images=frozenset((path_text(p), s) for p, s in images),
        texts=frozenset((t, x, s) for t, x, s in texts),
        media=frozenset(path_text(p) for (p,) in media),
        skipped={path_text(p): r for p, r in skipped},
        default_model=default[0][0] if default else None,
        disagreements=disagreements,
        temp_files=temps,
    )


class _read_only:
    """A read-only SQLite connection (a WAL left by a killed writer is read, not replayed)."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        self.db.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


def _rows(db: sqlite3.Connection, query: str) -> list[tuple]:
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):  # a home killed before its schema was made
            return []
        raise


def _disagreements(db: sqlite3.Connection, home: Path) -> list[str]:
    """Every (model, modality) whose index file does not hold exactly the catalog's vector ids.

    A space counts when the catalog holds vectors for it or an index file exists for it.
    """
    wanted: dict[tuple[str, str], np.ndarray] = {}
    for modality, table, column in (
        ("image", "image_embeddings", "media_id"),
        ("text", "text_embeddings", "text_id"),
    ):
        for spec, ids in _ids_by_model(db, table, column).items():
            wanted[(spec, modality)] = ids
    files: dict[tuple[str, str], Path] = {}
    for manifest in sorted((home / "vectors").glob("*.faiss.manifest.json")):
        try:
            data = json.loads(manifest.read_text())
            files[(data["model"], data["modality"])] = manifest.with_name(
                manifest.name.removesuffix(".manifest.json")
            )
        except (OSError, ValueError, KeyError) as error:
            return [f"{manifest.name}: unreadable manifest ({error})"]
    problems = []
    for key in sorted(set(wanted) | set(files)):
        catalog_ids = wanted.get(key, np.zeros(0, dtype=np.int64))
        if key not in files:
            if len(catalog_ids):
                problems.append(f"{key[0]} {key[1]}: {len(catalog_ids)} vectors, no index file")
            continue
        index_ids, problem = _index_ids(files[key])
        if problem:
            problems.append(f"{key[0]} {key[1]}: {problem}")
            continue
        missing = len(np.setdiff1d(catalog_ids, index_ids))
        extra = len(np.setdiff1d(index_ids, catalog_ids))
        twice = len(index_ids) - len(np.unique(index_ids))
        if missing or extra or twice:
            problems.append(
                f"{key[0]} {key[1]}: catalog {len(catalog_ids)}, index {len(index_ids)} "
                f"({missing} missing, {extra} extra, {twice} twice)"
            )
    return problems


def _ids_by_model(db: sqlite3.Connection, table: str, column: str) -> dict[str, np.ndarray]:
    rows = _rows(db, f"SELECT s.spec, e.{column} FROM {table} e JOIN models s ON s.id = e.model_id")
    by_model: dict[str, list[int]] = {}
    for spec, item in rows:
        by_model.setdefault(spec, []).append(int(item))
    return {spec: np.asarray(ids, dtype=np.int64) for spec, ids in by_model.items()}


def _index_ids(path: Path) -> tuple[np.ndarray, str | None]:
    """(n,) int64 ids an index file holds, or a problem: missing, unreadable, or not the size or
    count its manifest states."""
    import faiss

    empty = np.zeros(0, dtype=np.int64)
    if not path.is_file():
        return empty, "manifest without an index file"
    try:
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        index = faiss.read_index(str(path))
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    except (OSError, ValueError, RuntimeError, AttributeError) as error:
        return empty, f"index file unreadable ({error})"
    if manifest.get("file_size") not in (None, 0, path.stat().st_size):
        return ids, "index file size differs from its manifest"
    if manifest.get("count") not in (None, int(index.ntotal)):
        return ids, f"manifest says {manifest.get('count')} vectors, file holds {index.ntotal}"
    return ids, None


# -- watching a running command ------------------------------------------------------------


def home_signature(home: Path) -> tuple:
    """(path, size, mtime) of everything under a home: changes as soon as anything is written."""
    entries = []
    for folder, _, names in os.walk(home):
        for name in names:
            try:
                stat = os.stat(os.path.join(folder, name), follow_symlinks=False)
            except OSError:
                continue
            entries.append((folder, name, stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def saving_index(home: Path) -> bool:
    """True while a temporary file sits in the home's vectors folder (an index being saved)."""
    try:
        return any(entry.name.endswith(".tmp") for entry in os.scandir(home / "vectors"))
    except OSError:
        return False


@dataclass
class Timeline:
    """When a command first wrote to the home and when it exited, seconds from its start."""

    first_write: float | None = None
    exit: float | None = None
    samples: list[float] = field(default_factory=list)


def watch(child: Child, home: Path, timeout: float) -> tuple[Run, Timeline]:
    """Run a child to the end, noting when it first changed the home."""
    timeline = Timeline()
    initial = home_signature(home)
    while child.running() and time.perf_counter() - child.start < timeout:
        if timeline.first_write is None and home_signature(home) != initial:
            timeline.first_write = time.perf_counter() - child.start
        time.sleep(0.005)
    run = child.wait(timeout)
    timeline.exit = run.seconds
    return run, timeline


def kill_at(child: Child, home: Path, *, moment: str, delay: float, timeout: float) -> bool:
    """SIGKILL the child at a moment: "random" is `delay` s after its first write to the home,
    "save" the instant an index temporary file appears. True when it was still running."""
    initial = home_signature(home)
    fire_at = None
    while child.running():
        now = time.perf_counter() - child.start
        if now > timeout:
            break
        if moment == "save":
            if saving_index(home):
                return child.kill()
            time.sleep(0.0005)
            continue
        if fire_at is None and home_signature(home) != initial:
            fire_at = now + delay
        if fire_at is not None and now >= fire_at:
            return child.kill()
        time.sleep(0.002)
    child.kill()
    return False


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 30) -> tuple[int, dict | None]:
    """(status, JSON body or None) of a GET; status 0 when the connection failed."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except (OSError, ValueError):
        return 0, None
