"""One real embedded cluster per test session: `qcompute server` (SeaweedFS, SQLite, the local
executor) on free loopback ports, driven through the SDK. Stopped by PID at the end."""
from __future__ import annotations

import os

import pytest

from qcompute.server.testing import ClusterProcess, free_port  # noqa: F401 (used by tests)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    running = ClusterProcess(tmp_path_factory.mktemp("cluster"))
    running.start()
    yield running
    running.stop()


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
