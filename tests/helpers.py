"""Helpers shared by the test suites: free ports, a real SeaweedFS, S3 clients, shell
commands."""
from __future__ import annotations

import os
import secrets
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from qcompute.server.storage.seaweed import SeaweedFS
from qcompute.server.testing import free_port

__all__ = ["free_port", "start_seaweed", "s3_client", "sh", "host_pids_with", "ADMIN_ACCESS_KEY"]

ADMIN_ACCESS_KEY = "test-admin"


def sh(script: str) -> str:
    """A task command that runs ``script`` in a shell: commands run without one, as on a Qarnot
    node."""
    return "sh -c " + shlex.quote(script)


def host_pids_with(argument: str) -> list[int]:
    """Live (not zombie) processes of this host with ``argument`` in their command line: an
    instance's own pids are those of its PID namespace, so tests find its processes by a
    unique argument."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if argument.encode() not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def start_seaweed(data_dir: Path, timeout: float = 30.0) -> SeaweedFS:
    """A started ``weed mini`` on free ports under ``data_dir``; call ``.stop()`` when done."""
    weed = SeaweedFS(data_dir, free_port(), ADMIN_ACCESS_KEY, secrets.token_urlsafe(24))
    weed.start(timeout=timeout)
    return weed


def s3_client(weed: SeaweedFS, access_key: str | None = None,
              secret_key: str | None = None) -> Any:
    """A boto3 S3 client on ``weed``: the admin's unless keys are given."""
    return weed.client(access_key or weed.admin_access_key, secret_key or weed.admin_secret_key)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition",
             interval: float = 0.01) -> Any:
    """The first true value of ``predicate``, asked every ``interval`` seconds; AssertionError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout:g} s: {what}")
        time.sleep(interval)
