"""A throw-away embedded cluster, for tests and benchmarks (yours and ours).

``python -m qcompute server`` in a child process, on free loopback ports and its own data dir,
stopped by PID::

    from qcompute.server.testing import running_cluster

    with running_cluster() as cluster:
        conn = cluster.connection()        # a qcompute.Connection as the cluster's owner
        print(cluster.url, cluster.config)  # the API URL, and the client config it wrote
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
from typing import Any, Iterator, Optional

from .storage.seaweed import pick_free_port

__all__ = ["ClusterProcess", "running_cluster", "free_port"]

free_port = pick_free_port  # a loopback port whose +10000 neighbour (SeaweedFS gRPC) is free


class ClusterProcess:
    """A ``python -m qcompute server`` child process on its own ports and data dir, serving
    the API on ``host`` (loopback unless told)."""

    def __init__(self, data_dir: Path, workers: int = 4,
                 env: Optional[dict[str, str]] = None, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        # the server's environment (its settings)
        self.env = {**os.environ, **(env or {}), "QCOMPUTE_SERVER_HOST": host}
        self.port = free_port()
        self.s3_port = free_port(exclude={self.port})  # two picks could meet, as they once did
        self.workers = workers
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> Path:
        """The client config the server writes (API URL, owner token; the SDKs ask the storage
        URL from ``GET /settings``)."""
        return self.data_dir / "qcompute.conf"

    def start(self, timeout: float = 60) -> None:
        """Start it (again, on the same ports and data) and wait until it is healthy."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qcompute", "server", "--data-dir", str(self.data_dir),
                 "--port", str(self.port), "--s3-port", str(self.s3_port),
                 "--workers", str(self.workers)],
                stdout=log, stderr=log, start_new_session=True, env=self.env)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.data_dir / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the cluster did not start:\n{tail}")
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

    def kill(self) -> None:
        """SIGKILL the server alone, as a crash would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def connection(self, **kwargs: Any):  # -> qcompute.Connection
        import qcompute

        return qcompute.Connection(fileconf=str(self.config), **kwargs)


@contextlib.contextmanager
def running_cluster(workers: int = 4, keep: bool = False,
                    env: Optional[dict[str, str]] = None) -> Iterator[ClusterProcess]:
    """Start a cluster in a temporary dir (``env``: more server settings, as
    ``QCOMPUTE_SERVER_*`` variables); stop it and remove the dir (unless ``keep``) after."""
    data_dir = Path(tempfile.mkdtemp(prefix="qcompute-cluster-"))
    cluster = ClusterProcess(data_dir, workers=workers, env=env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
