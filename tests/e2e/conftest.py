"""The e2e suite drives the real embedded cluster of ``tests/conftest.py`` (one per test
session, shared with ``tests/compat``) through the SDK."""
from __future__ import annotations

import os

import pytest

from qcompute.server.testing import ClusterProcess, free_port  # noqa: F401 (used by tests)


@pytest.fixture
def conn(cluster):
    connection = cluster.connection()
    yield connection
    connection.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def host_pids_with(argument: str) -> list[int]:
    """Live processes of this host with ``argument`` in their command line (an instance's own
    pids are those of its PID namespace: tests find its processes by a unique argument)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if argument.encode() in handle.read().split(b"\0") and pid_alive(int(entry)):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found
