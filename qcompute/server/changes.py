"""Long-poll support: async requests wait here until the scheduler commits a change to a task.

The scheduler thread calls :meth:`TaskChanges.publish` after each committed round with the
uuids it touched; a waiting request is woken on its own event loop. Waiting holds no thread and
no database connection. With several replicas, ``mirror`` (set by
:class:`~qcompute.server.replicas.Replica`) sends each publication to the other replicas, whose
feeds publish it locally.
"""
from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

__all__ = ["TaskChanges"]


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class TaskChanges:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        self.mirror: Optional[Callable[[list[str]], None]] = None

    @contextmanager
    def watching(self, uuids: Iterable[str]) -> Iterator[asyncio.Future]:
        """A future resolved at the next committed change to any of these tasks.

        Enter it *before* reading the state you wait on, so no change can slip in between.
        """
        uuids = list(uuids)
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            for uuid in uuids:
                self._waiters[uuid].add(future)
        try:
            yield future
        finally:
            with self._lock:
                for uuid in uuids:
                    waiters = self._waiters.get(uuid)
                    if waiters is not None:
                        waiters.discard(future)
                        if not waiters:
                            del self._waiters[uuid]

    def publish(self, uuids: Iterable[str], *, mirror: bool = True) -> None:
        uuids = list(uuids)
        if mirror and self.mirror is not None and uuids:
            self.mirror(uuids)
        with self._lock:
            futures = {f for uuid in uuids for f in self._waiters.get(uuid, ())}
        for future in futures:
            future.get_loop().call_soon_threadsafe(_wake, future)

    def release_all(self) -> None:
        """Wake every waiter (the server is stopping)."""
        with self._lock:
            futures = {f for waiters in self._waiters.values() for f in waiters}
        for future in futures:
            future.get_loop().call_soon_threadsafe(_wake, future)
