"""Where the work of a request runs, so that no request waits behind a slow one.

- `fast`: text searches (their sentence joins the text batcher), searches by a stored vector,
  lookups of indexed images: a few milliseconds of FAISS and catalog work each, many at once.
- `slow`: what embeds an uploaded image or many sentences (`classify` of many labels, uploads):
  one at a time, in threads of their own, so they queue behind each other and never in front of
  a text search.
- Thumbnails, originals, status and image info stay in the server's default thread pool.

A route awaits its lane (`await lanes.fast(call, ...)`): while work waits for a lane it holds no
thread, and the event loop keeps answering everything else.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Lanes:
    """Two thread pools: `fast_threads` for quick work, `slow_threads` for heavy work."""

    def __init__(self, *, fast_threads: int, slow_threads: int):
        self._pools = {
            "fast": ThreadPoolExecutor(fast_threads, thread_name_prefix="fast-lane"),
            "slow": ThreadPoolExecutor(slow_threads, thread_name_prefix="slow-lane"),
        }
        self._running = {"fast": 0, "slow": 0}
        self._count = threading.Lock()

    async def fast(self, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`call(*args, **kwargs)` in the fast lane."""
        return await self._run("fast", functools.partial(call, *args, **kwargs))

    async def slow(self, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`call(*args, **kwargs)` in the slow lane (after the slow work handed in before)."""
        return await self._run("slow", functools.partial(call, *args, **kwargs))

    def running(self, lane: str) -> int:
        """How many calls run in `lane` ("fast" or "slow") now (statistics)."""
        return self._running[lane]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, lane: str, call: Callable[[], T]) -> T:
        def counted() -> T:
            with self._count:
                self._running[lane] += 1
            try:
                return call()
            finally:
                with self._count:
                    self._running[lane] -= 1

        return await asyncio.wrap_future(self._pools[lane].submit(counted))
