"""The local backend: decode worker processes beside the model, batches in file order."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from functools import partial

from searchengine.ingest.decode import Decoded, shared_part
from searchengine.settings import IngestSettings

log = logging.getLogger(__name__)


def _worker_init(_worker_id: int, idle: bool = False) -> None:
    import torch

    torch.set_num_threads(1)  # decoding is single-threaded; leave the cores to the model
    if idle:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a sandbox may forbid it: decode at normal priority
            log.debug("decode worker stays at normal priority: %s", error)


def idle_priority_available() -> bool:
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")


class _Starved(Exception):
    """Idle-priority workers delivered nothing for `starved_after` seconds."""


def decoded_batches(dataset, settings: IngestSettings) -> Iterator[list[Decoded]]:
    """Batches of `settings.batch_size` decoded files, produced by worker processes.

    Each model batch is decoded by all workers together, a share each (the DataLoader hands its
    workers consecutive index batches in turn and returns them in order), so the first batch is
    ready after 1/workers of the time one worker would take: on 12-megapixel JPEGs that start-up
    is otherwise ~0.6 s of idle model per `index` call. In the steady state it changes nothing.

    With `decode_priority="idle"` the workers run under `SCHED_IDLE`: they decode on CPU time the
    model leaves (its threads waiting at a barrier, the main process waiting for the next batch)
    and never preempt a model thread, whose partner would otherwise sleep at the next barrier.
    If they deliver nothing for `settings.starved_after` seconds, something else is keeping every
    core busy; they are restarted at normal priority from the first file not yet delivered.
    """
    idle = (
        settings.workers > 0
        and settings.decode_priority == "idle"
        and idle_priority_available()
    )
    done = 0  # files delivered, in order
    batch: list[Decoded] = []
    while done < len(dataset):
        try:
            for part in _decoded_parts(dataset, done, settings, idle):
                done += len(part)
                batch.extend(part)
                while len(batch) >= settings.batch_size:
                    yield batch[: settings.batch_size]
                    batch = batch[settings.batch_size :]
        except _Starved:
            log.warning(
                "decode workers got no CPU time for %.0f s (something else keeps every core "
                "busy); restarting them at normal priority",
                settings.starved_after,
            )
            idle = False
    if batch:
        yield batch


def _decoded_parts(dataset, start: int, settings: IngestSettings, idle: bool) -> Iterator[list]:
    """Lists of decoded files from `start` on, each one worker's share of a model batch."""
    from torch.utils.data import DataLoader, Subset

    share = -(-settings.batch_size // max(1, settings.workers))  # ceil
    remaining = dataset if start == 0 else Subset(dataset, range(start, len(dataset)))
    loader = DataLoader(
        remaining,
        batch_size=share,
        num_workers=settings.workers,
        collate_fn=shared_part,
        worker_init_fn=partial(_worker_init, idle=idle) if settings.workers else None,
        prefetch_factor=4 if settings.workers else None,
        timeout=settings.starved_after if idle else 0,
    )
    parts = iter(loader)
    while True:
        waiting_since = time.monotonic()
        try:
            part = next(parts)
        except StopIteration:
            return
        except RuntimeError:
            if idle and time.monotonic() - waiting_since >= settings.starved_after:
                raise _Starved() from None  # the DataLoader's timeout, not a worker's failure
            raise
        yield part
