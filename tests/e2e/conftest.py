"""The e2e suite drives the real embedded cluster of ``tests/conftest.py`` (one per test
session, shared with ``tests/compat``) through the SDK."""
from __future__ import annotations

import os

import pytest

from qcompute.server.testing import ClusterProcess, free_port  # noqa: F401 (used by tests)
from tests.helpers import host_pids_with  # noqa: F401 (used by tests)


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

