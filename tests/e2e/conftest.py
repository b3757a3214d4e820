"""One real embedded cluster per test session: `qcompute server` (SeaweedFS, SQLite, the local
executor) on free loopback ports, driven through the SDK. Stopped by PID at the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import qcompute

from ..helpers import free_port


class ClusterProcess:
    """A `python -m qcompute server` child process on its own ports and data dir."""

    def __init__(self, data_dir: Path, workers: int = 4) -> None:
        self.data_dir = data_dir
        self.port, self.s3_port, self.workers = free_port(), free_port(), workers
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.data_dir / "qcompute.conf"

    def start(self, timeout: float = 60) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qcompute", "server", "--data-dir", str(self.data_dir),
             "--port", str(self.port), "--s3-port", str(self.s3_port),
             "--workers", str(self.workers)],
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.data_dir / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"cluster did not start:\n{tail}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return json.loads(response.read())["status"] == "ok"
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL the server alone, as a crash would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def connection(self, **kwargs) -> qcompute.Connection:
        return qcompute.Connection(fileconf=str(self.config), **kwargs)


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
