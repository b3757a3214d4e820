"""A throw-away embedded cluster for the benchmarks: ``python -m qcompute server`` on free loopback
ports in a temporary data dir, stopped by PID.

Usage::

    from bench._cluster import running_cluster

    with running_cluster() as cluster:
        conn = cluster.connection()          # a qcompute.Connection (the owner)
        print(cluster.url, cluster.config)   # the API URL and the client config file
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

from qcompute.server.storage.seaweed import pick_free_port

__all__ = ["ClusterProcess", "running_cluster"]


class ClusterProcess:
    """A ``python -m qcompute server`` child process on its own ports and data dir."""

    def __init__(self, data_dir: Path, workers: int = 4) -> None:
        self.data_dir = Path(data_dir)
        self.port, self.s3_port, self.workers = pick_free_port(), pick_free_port(), workers
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        """The client config file the server writes (token, API URL, storage URL)."""
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
        """SIGTERM the server (it stops SeaweedFS and the runners); SIGKILL its group if stuck."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def connection(self, **kwargs):  # -> qcompute.Connection
        import qcompute

        return qcompute.Connection(fileconf=str(self.config), **kwargs)


@contextlib.contextmanager
def running_cluster(workers: int = 4, keep: bool = False) -> Iterator[ClusterProcess]:
    """Start a cluster in a temporary dir; stop it and remove the dir (unless ``keep``) after."""
    data_dir = Path(tempfile.mkdtemp(prefix="qcompute-bench-"))
    cluster = ClusterProcess(data_dir, workers=workers)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
