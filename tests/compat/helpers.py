"""Helpers of the compat suite: a short-interval wait, and a recorder of the SDK's S3 calls."""
from __future__ import annotations

import time
from typing import Any, Iterable

import qarnot

OFFICIAL_AGENT = f"qarnot-sdk-python/{qarnot.__version__}"  # what the SDK sends, e.g. .../v2.23.0
FINAL_STATES = ("Success", "Failure", "Cancelled")


def wait_for(task: Any, states: Iterable[str] = FINAL_STATES, timeout: float = 60.0) -> str:
    """Poll ``task.update(True)`` every 0.1 s until ``task.state`` is one of ``states``.

    The SDK's own ``wait()`` (and ``run()``) poll every 10 s; only ``test_tasks.py::test_run``
    uses them."""
    wanted = tuple(states)
    deadline = time.monotonic() + timeout
    while True:
        task.update(True)
        if task.state in wanted:
            return task.state
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task.uuid} is {task.state}, not {wanted}, "
                                 f"after {timeout} s; errors: {task.errors}")
        time.sleep(0.1)


class S3Calls:
    """The S3 operations (and their headers) the SDK sends, through its client and its resource.

    Use as a context manager around the calls to observe."""

    def __init__(self, conn: qarnot.Connection) -> None:
        self._clients = [conn.s3client, conn.s3resource.meta.client]
        self.calls: list[tuple[str, dict[str, str]]] = []

    def _record(self, request: Any, event_name: str, **_: Any) -> None:
        self.calls.append((event_name.rsplit(".", 1)[-1], dict(request.headers)))

    def __enter__(self) -> "S3Calls":
        for client in self._clients:
            client.meta.events.register("before-send.s3", self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        for client in self._clients:
            client.meta.events.unregister("before-send.s3", self._record)

    @property
    def operations(self) -> list[str]:
        return [name for name, _ in self.calls]

    def headers(self, operation: str) -> list[dict[str, str]]:
        return [headers for name, headers in self.calls if name == operation]
