"""Task output: per-instance stdout/stderr files, bounded like a circular buffer.

Each stream of each instance is appended to ``<root>/<task>/<instance>.<stream>``, and to
``<root>/<task>/task.<stream>`` for the whole task in arrival order. When a file passes its bound
the oldest bytes are dropped; ``<file>.dropped`` counts them so that read cursors (logical byte
offsets, kept in SQL by the caller) stay valid. Each task's files have a lock of their own (one
of a fixed set of stripes), so one task's flood of output never waits on another's. Each
append is published on :attr:`OutputStore.changes` (keyed by the task or pool uuid), so a read
held by a long poll wakes as soon as output arrives.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Optional

from ..changes import TaskChanges

__all__ = ["OutputStore", "STREAMS"]

STREAMS = ("stdout", "stderr")
TASK_LEVEL = -1  # instance id used for the whole task's stream
_STRIPES = 64


class OutputStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._locks = [threading.Lock() for _ in range(_STRIPES)]
        self.changes = TaskChanges()  # woken at each append, per task (or pool) uuid

    def _lock(self, task_uuid: str) -> threading.Lock:
        return self._locks[hash(task_uuid) % _STRIPES]

    def _path(self, task_uuid: str, instance_id: int, stream: str) -> Path:
        name = "task" if instance_id == TASK_LEVEL else str(instance_id)
        return self.root / task_uuid / f"{name}.{stream}"

    def append(self, task_uuid: str, instance_id: int, stream: str, text: str) -> None:
        data = text.encode()
        with self._lock(task_uuid):
            for target in (instance_id, TASK_LEVEL):
                path = self._path(task_uuid, target, stream)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("ab") as fh:
                    fh.write(data)
                    size = fh.tell()
                if size > self.max_bytes * 3 // 2:  # trim rarely: amortised O(1) per byte
                    self._trim(path, size)
        self.changes.publish((task_uuid,))

    def _trim(self, path: Path, size: int) -> None:
        drop = size - self.max_bytes
        with path.open("rb") as fh:
            fh.seek(drop)
            tail = fh.read()
        path.write_bytes(tail)
        counter = path.with_name(path.name + ".dropped")
        previous = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(previous + drop))

    def read(self, task_uuid: str, instance_id: int, stream: str,
             since: Optional[int] = None) -> tuple[str, int]:
        """Text from logical offset ``since`` (None: all that is kept); and the end offset."""
        path = self._path(task_uuid, instance_id, stream)
        with self._lock(task_uuid):
            if not path.exists():
                return "", since or 0
            counter = path.with_name(path.name + ".dropped")
            dropped = int(counter.read_text()) if counter.exists() else 0
            data = path.read_bytes()
        start = 0 if since is None else max(0, since - dropped)
        return data[start:].decode(errors="replace"), dropped + len(data)

    def delete(self, task_uuid: str) -> None:
        with self._lock(task_uuid):
            shutil.rmtree(self.root / task_uuid, ignore_errors=True)
