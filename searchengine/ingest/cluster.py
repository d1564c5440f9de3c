"""The Ray backend: the decode and embed stages mapped by Ray Data, the driver the one writer.

    plan (driver) -> from_items(files) -> decode (CPU tasks) -> embed (actor pool, one model
    per actor, a GPU each where there are GPUs) -> iter_batches (driver) -> commit_batch

The driver plans exactly as the local backend does (`scan.plan`) and commits every finished
batch through the same `commit.commit_batch`, in file order (Ray Data's `preserve_order`), so
ids and files match a local run and a crash loses at most the batches in flight: the next run
plans again from the catalog and resumes. A worker that dies is Ray's to handle, by Ray Data's
own defaults: a decode task lost with its worker is run again (`max_retries=-1`), and a dead
embed actor is restarted and its batches sent again (`max_restarts=-1`, `max_task_retries=-1`).

Workers read the files at the paths the driver planned (shared storage); with
`RaySettings.ship_bytes` the driver reads them and ships the bytes instead. `import ray` happens
only here, and only when a caller asks for Ray.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from searchengine.catalog import Catalog
from searchengine.errors import ClusterError, InvalidInputError
from searchengine.ingest.commit import BatchResult, commit_batch, embed_batch
from searchengine.ingest.decode import Decoded, decode_data, decode_file
from searchengine.ingest.local import _worker_init, idle_priority_available
from searchengine.ingest.scan import FileStat
from searchengine.settings import EncoderSettings, IngestSettings, RaySettings

log = logging.getLogger(__name__)

INSTALL_RAY = "pip install 'searchengine[ray]'"
ADDRESS = re.compile(r"auto|ray://[^\s/]+|[^\s/:]+:\d+")
"""The addresses `ray.init` takes that name a cluster: auto, Ray Client's ray://HOST[:PORT], the
head's HOST:PORT (its GCS)."""
NOT_SEEN = (
    "not found on Ray worker {host}: every node must see the photos at the same path (shared "
    "storage), or pass --ray-ship-bytes so that the driver ships them"
)


def require_ray(settings: RaySettings) -> None:
    """Check, before anything is touched, that Ray Data can be imported (ClusterError saying how
    to install it) and that `settings.address` has the form of a Ray address (InvalidInputError);
    whether the cluster answers is `connect`'s to find out."""
    address = settings.address
    if address is not None and not ADDRESS.fullmatch(address):
        raise InvalidInputError(
            f"{address!r} is not a Ray address: give auto, ray://HOST:10001 or HOST:PORT, or "
            "--ray alone for a local instance (after the paths: `index PATHS --ray`, or "
            "`--ray=local`, so that a folder is not read as the address)"
        )
    if settings.concurrency is not None and settings.concurrency < 1:
        raise InvalidInputError("the number of embed actors (concurrency) must be >= 1")
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.data") is None:
        raise ClusterError(
            f"--ray needs Ray Data, which is not installed here; `{INSTALL_RAY}` (or index "
            "without --ray, with local processes)"
        )


@dataclass
class RayConnection:
    """This process's connection to Ray; `close` stops a local instance that `connect` started
    (a session the caller opened itself is left as it is)."""

    address: str
    started: bool

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def connect(settings: RaySettings) -> RayConnection:
    """Join the Ray cluster at `settings.address`, or start a local instance when it is None.
    A process already connected (`ray.init` called by the caller) keeps its session."""
    require_ray(settings)
    import ray

    if ray.is_initialized():
        log.info("using the Ray session this process already holds")
        return RayConnection("(existing session)", started=False)
    address = settings.address or "local"
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ClusterError(
            f"connecting to {address!r} goes through Ray Client, which is not installed here; "
            "`pip install 'ray[client]'`, or run the command on a node of the cluster with "
            "--ray auto"
        )
    if address not in ("local", "auto"):
        _probe(address)
    try:
        ray.init(
            address=address,
            include_dashboard=False if address == "local" else None,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as error:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r}: {error}. Start one (`ray start --head` "
            "on the head node), check the address (`auto` for the cluster this node belongs to, "
            "ray://HOST:10001 for Ray Client), or leave out the address to run a local instance"
        ) from error
    return RayConnection(address, started=True)


ERROR_LINE = re.compile(r"([A-Za-z_][\w.]*)?(Error|Exception): \S")

DECODE_MEMORY = 768 * 2**20
"""Bytes Ray reserves for a decode task: its worker with torch loaded (~550 MB measured) and a
12-megapixel photo decoded and resized."""

PROBE_SECONDS = 5.0
"""How long `connect` waits for a cluster's port to answer: `ray.init` itself waits two minutes
for an address where nothing listens, then ends the process."""


def _probe(address: str) -> None:
    """Raise ClusterError unless something accepts a TCP connection at `address`'s HOST:PORT
    (Ray Client's port is 10001 when ray://HOST names none)."""
    host, _, port = address.removeprefix("ray://").partition(":")
    try:
        with socket.create_connection((host, int(port or 10001)), timeout=PROBE_SECONDS):
            pass
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or str(error)
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r} ({reason}). Start it (`ray start "
            "--head` on the head node), check the address (auto for the cluster this node "
            "belongs to, ray://HOST:10001 for Ray Client, HOST:6379 for the head), or give "
            "--ray alone to run a local instance"
        ) from error


def embed_files_on_ray(
    catalog: Catalog,
    encoder,
    space,
    files: list[FileStat],
    settings: IngestSettings,
    *,
    ray_settings: RaySettings,
    encoder_settings: EncoderSettings,
    progress: bool = True,
) -> BatchResult:
    """`commit.embed_files` on Ray: decode and embed on the cluster, commit here, batch by batch.

    `encoder` is the driver's (its `preprocess` and `image_size` go to the decode tasks; it
    embeds here only a file whose stored vector vanished during the run). Each embed actor loads
    `encoder.spec` once, with `encoder_settings` on its own device. Content hashes that already
    have a vector of this model are skipped by the actors and reused at commit, as locally.
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # commit in file order: the same ids
    context.enable_progress_bars = progress
    totals = np.zeros(3, dtype=np.int64)  # embedded, reused, skipped
    committed: set[str] = set()  # hashes written by this run (duplicates embedded twice count once)
    try:
        items, unread = _items(files, ship_bytes=ray_settings.ship_bytes)
        if unread:
            totals += _as_array(commit_batch(catalog, space, unread, {}, embedded=0))
        started = time.perf_counter()
        batches = _embedded_batches(catalog, items, encoder, space, settings, ray_settings,
                                    encoder_settings=encoder_settings)
        for number, (batch, fresh) in enumerate(_cluster_errors(batches), start=1):
            if number == 1:
                log.info("first batch after %.1f s (workers and model starting)",
                         time.perf_counter() - started)
            result = _commit(catalog, encoder, space, batch, fresh, committed, settings)
            totals += _as_array(result)
            if number % settings.save_every == 0:
                space.save()
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        space.save()
    return BatchResult(*map(int, totals))


def _cluster_errors(batches: Iterator) -> Iterator:
    """`batches`, with a failure Ray gave up on (a worker lost more often than it retries, an
    error in a stage) raised as ClusterError: the batches committed before it are kept."""
    from ray.data.exceptions import SystemException
    from ray.exceptions import RayError

    try:
        yield from batches
    except (RayError, SystemException) as error:
        raise ClusterError(
            f"the Ray pipeline failed: {_reason(error)}. The batches "
            "committed so far are kept: run the command again to continue (the Ray logs, under "
            "/tmp/ray/session_latest/logs on each node, say more)"
        ) from error


def _reason(error: Exception) -> str:
    """The innermost `SomeError: message` line of a Ray error's text (which carries the remote
    traceback), else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if ERROR_LINE.match(line)]
    return (named[-1] if named else lines[0] if lines else type(error).__name__).rstrip(".")


def _as_array(result: BatchResult) -> np.ndarray:
    return np.array([result.embedded, result.reused, result.skipped], dtype=np.int64)


def _items(files: list[FileStat], *, ship_bytes: bool) -> tuple[list[dict], list[Decoded]]:
    """The rows Ray Data starts from (path, size, mtime_ns; and `data`, the bytes, when the
    driver ships them), and the files the driver could not read for shipping."""
    rows: list[dict] = []
    unread: list[Decoded] = []
    for stat in files:
        row: dict[str, Any] = {"path": stat.path, "size": stat.size, "mtime_ns": stat.mtime_ns}
        if ship_bytes:
            try:
                row["data"] = Path(stat.path).read_bytes()
            except OSError as error:
                unread.append(Decoded(stat, None, None, None, f"unreadable: {error.strerror}"))
                continue
        rows.append(row)
    return rows, unread


def _embedded_batches(
    catalog: Catalog,
    items: list[dict],
    encoder,
    space,
    settings: IngestSettings,
    ray_settings: RaySettings,
    *,
    encoder_settings: EncoderSettings,
) -> Iterator[tuple[list[Decoded], dict[str, np.ndarray]]]:
    """(decoded files without pixels, content hash -> (d,) float32 vector made by an actor),
    a batch of `settings.batch_size` files at a time, in the order of `items`."""
    import ray
    from ray.data import ActorPoolStrategy

    if not items:
        return
    gpus = _gpus_per_actor(ray_settings)
    actors = ray_settings.concurrency or _default_actors(gpus)
    known = ray.put(_digests(catalog.hashes_with_vector(space.model.id)))
    decode_options = {
        "preprocess": encoder.preprocess,
        "model_size": encoder.image_size,
        "draft_size": encoder.image_size if settings.draft else None,
        "crop": encoder.draft_crop,
        "max_pixels": settings.max_pixels,
        # the model shares these cores: decode on the time it leaves, as the local workers do
        "idle": not gpus and settings.decode_priority == "idle",
    }
    blocks = max(1, min(len(items) // settings.batch_size, 10_000))
    dataset = (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            decode_rows,  # type: ignore[arg-type]  # Ray's hint has no keyword-only options
            batch_size=settings.batch_size,
            batch_format="numpy",
            fn_kwargs=decode_options,
            num_cpus=1,
            # a reservation for the decoded image, which also keeps Ray Data from fusing the
            # decode into the embed actor (ops with other resources are not fused): fused, the
            # actor would decode and embed in turn, its model (or GPU) waiting for each decode
            memory=DECODE_MEMORY,
        )
        .map_batches(
            EmbedStage,
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "spec": encoder.spec,
                "settings": replace(encoder_settings, device="cuda" if gpus else "cpu"),
                "known": known,
                "threads": 0 if gpus else _embed_threads(ray_settings),
            },
            num_gpus=gpus,
            num_cpus=ray_settings.actor_cpus,
        )
    )
    for rows in dataset.iter_batches(batch_size=settings.batch_size, batch_format="numpy"):
        batch = [pickle.loads(record) for record in rows["record"]]
        fresh = {
            cast(str, record.content_hash): vector
            for record, vector, made in zip(batch, rows["vector"], rows["embedded"], strict=True)
            if made
        }
        yield batch, fresh


def _embed_threads(settings: RaySettings) -> int:
    return settings.embed_threads or max(1, round(settings.actor_cpus))


def _gpus_per_actor(settings: RaySettings) -> float:
    import ray

    if settings.num_gpus is not None:
        return settings.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _default_actors(gpus: float) -> int:
    import ray

    if not gpus:
        return 1
    return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))


def _digests(hashes: list[str]) -> np.ndarray:
    """(n,) sorted |S32: the raw BLAKE3 digests of hex `hashes` (half the size, searchsorted)."""
    return np.sort(np.array([bytes.fromhex(h) for h in hashes], dtype="S32"))


def _known(known: np.ndarray, hashes: list[str]) -> np.ndarray:
    """(len(hashes),) bool: which hex `hashes` are among the sorted |S32 digests `known`."""
    if not len(known) or not hashes:
        return np.zeros(len(hashes), dtype=bool)
    wanted = np.array([bytes.fromhex(h) for h in hashes], dtype="S32")
    at = np.minimum(np.searchsorted(known, wanted), len(known) - 1)
    return known[at] == wanted


def _commit(
    catalog: Catalog,
    encoder,
    space,
    batch: list[Decoded],
    fresh: dict[str, np.ndarray],
    committed: set[str],
    settings: IngestSettings,
) -> BatchResult:
    """The commit stage of one batch: actor vectors plus stored ones by content hash (as
    `commit._store_batch`); a hash whose stored vector vanished since the plan (its only file
    changed in this run) is embedded here. Counts as a local run would."""
    good = [d for d in batch if d.error is None]
    hashes = {cast(str, d.content_hash) for d in good}
    vectors = catalog.vectors_by_hash(space.model.id, hashes - fresh.keys())
    embedded = len(fresh.keys() - committed)
    vectors.update(fresh)
    missing = [d for d in good if d.content_hash not in vectors]
    if missing:
        again = [_decode_here(d.stat, encoder, settings) for d in missing]
        vectors.update(embed_batch(encoder, again, {}))
        batch = [next((a for a in again if a.stat == d.stat), d) for d in batch]
        embedded += len({a.content_hash for a in again if a.error is None})
    committed.update(hashes)
    return commit_batch(catalog, space, batch, vectors, embedded=embedded)


def _decode_here(stat: FileStat, encoder, settings: IngestSettings) -> Decoded:
    return decode_file(
        stat,
        encoder.preprocess,
        encoder.image_size,
        draft_size=encoder.image_size if settings.draft else None,
        crop=encoder.draft_crop,
        max_pixels=settings.max_pixels,
    )


def decode_rows(
    rows: dict[str, np.ndarray],
    *,
    preprocess: Callable,
    model_size: int,
    draft_size: int | None,
    crop: bool,
    max_pixels: int,
    idle: bool = False,
) -> dict[str, np.ndarray]:
    """The decode stage as a Ray Data batch function (a CPU task); with `idle`, its worker
    process decodes at idle priority (Linux `SCHED_IDLE`, as `local._worker_init`).

    In: `path` (n,) str, `size` and `mtime_ns` (n,) int64, and `data` (n,) bytes when shipped.
    Out: `record` (n,) object, the pickled `Decoded` of each file without its pixels (the reason
    where it is not an image), and `pixels` (n, 3, H, W) float32, zeros where there is no image."""

    _worker_init(0, idle=idle and idle_priority_available())  # one thread: Ray counts CPUs
    records = np.empty(len(rows["path"]), dtype=object)
    images: dict[int, np.ndarray] = {}
    for i, path in enumerate(rows["path"]):
        stat = FileStat(str(path), int(rows["size"][i]), int(rows["mtime_ns"][i]))
        shipped = rows["data"][i] if "data" in rows else None
        decoded = _decode_on_worker(
            stat, shipped, preprocess, model_size,
            draft_size=draft_size, crop=crop, max_pixels=max_pixels,
        )
        if decoded.pixels is not None:
            images[i] = decoded.pixels.numpy()
        records[i] = pickle.dumps(replace(decoded, pixels=None))
    shape = next(iter(images.values())).shape if images else (3, model_size, model_size)
    pixels = np.zeros((len(records), *shape), dtype=np.float32)
    for i, image in images.items():
        pixels[i] = image
    return {"record": records, "pixels": pixels}


def _decode_on_worker(
    stat: FileStat, shipped: bytes | None, preprocess: Callable, model_size: int, **options
) -> Decoded:
    """`decode_data` on the shipped bytes, or on the file as this worker sees it; a file it
    cannot find is reported as a worker without the photos (not as a bad image)."""
    if shipped is None:
        try:
            shipped = Path(stat.path).read_bytes()
        except FileNotFoundError:
            return Decoded(stat, None, None, None, NOT_SEEN.format(host=socket.gethostname()))
        except OSError as error:
            return Decoded(stat, None, None, None, f"unreadable: {error.strerror or error}")
    return decode_data(stat, bytes(shipped), preprocess, model_size, **options)


class EmbedStage:
    """The embed stage as a Ray Data callable class: one per actor, the model loaded once.

    A batch's files whose content hash is `known` (already has a vector of this model) or
    repeats an earlier file of the batch are not run through the model; the driver reuses the
    stored vector, as the local backend does."""

    def __init__(self, spec, settings: EncoderSettings, known, threads: int):
        import ray
        import torch

        from searchengine.encoder import Encoder

        if threads:
            torch.set_num_threads(threads)
        self.known = ray.get(known) if isinstance(known, ray.ObjectRef) else known
        self.encoder = Encoder(spec, settings)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """In: `record` (n,) object and `pixels` (n, 3, H, W) float32 (see `decode_rows`).
        Out: `record`, `vector` (n, d) float32 (unit where made, zeros elsewhere) and
        `embedded` (n,) bool: which rows the model made."""
        import torch

        records = [pickle.loads(record) for record in rows["record"]]
        good = [i for i, r in enumerate(records) if r.error is None]
        is_known = _known(self.known, [records[i].content_hash for i in good])
        first: dict[str, int] = {}  # content hash -> the row that embeds it
        for i, skip in zip(good, is_known, strict=True):
            if not skip:
                first.setdefault(records[i].content_hash, i)
        rows_to_embed = sorted(first.values())
        vectors = np.zeros((len(records), self.encoder.dim), dtype=np.float32)
        embedded = np.zeros(len(records), dtype=bool)
        if rows_to_embed:
            pixels = torch.from_numpy(np.ascontiguousarray(rows["pixels"][rows_to_embed]))
            vectors[rows_to_embed] = self.encoder.encode_images(pixels)  # (b, d) unit
            embedded[rows_to_embed] = True
        return {"record": rows["record"], "vector": vectors, "embedded": embedded}
