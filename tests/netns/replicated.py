"""Two API replicas on two hosts, one PostgreSQL, one Ray cluster (``test_replicas.py``), as
docs/deployment.rst "Replicas across machines" sets them up:

* host 3 (10.213.0.3): PostgreSQL bound to its address, an S3 store (SeaweedFS as separate
  processes), a standalone Ray head (``ray start --head``, no CPUs: it runs no instance), and a
  run log: an HTTP server that counts the runs the instances report;
* host 1 and host 2: a Ray node each (``qcompute node join``, 2 slots), and a
  ``qcompute server --executor ray --ray-address <host 3>`` on the host's address, both on the
  same database, store and data dir (the namespaces share the filesystem, as machines would
  share a network file system). Replica 1 starts first, so it holds the scheduler.

Killing a replica leaves the Ray head, the database and the store running: they are on host 3.
"""
from __future__ import annotations

import collections
import json
import secrets
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from qcompute.server.bootstrap import read_token
from qcompute.server.testing import ClusterProcess
from tests.external_s3 import SeaweedCluster
from tests.postgres import PostgresServer

from .conftest import API_PORT, ENDED, _process_env, wait_for
from .topology import Host, Topology

RAY_PORT, PG_PORT, RUN_LOG_PORT = 6379, 5432, 8900
SLOTS = 2  # per replica host


class RunLog:
    """An HTTP server on host 3 counting ``GET /start/<task uuid>/<instance id>`` (a run began)
    and ``GET /end/...`` (its command is done)."""

    def __init__(self, host: Host) -> None:
        self.runs: collections.Counter = collections.Counter()
        runs, lock = self.runs, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                with lock:
                    runs[self.path.strip("/")] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        with host.entered():  # the listening socket is host 3's
            self.server = ThreadingHTTPServer((host.address, RUN_LOG_PORT), Handler)
        self.url = f"http://{host.address}:{RUN_LOG_PORT}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, task_uuid: str, instance_id: int, what: str = "start") -> int:
        """The runs of the instance that began (or ended: ``what="end"``)."""
        return self.runs[f"{what}/{task_uuid}/{instance_id}"]

    def running(self, task_uuid: str, instance_id: int) -> bool:
        return self.count(task_uuid, instance_id) > self.count(task_uuid, instance_id, "end")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Replicated:
    """The running hosts: ``replicas`` (on h1 and h2), ``postgres``, ``store``, ``run_log`` on
    h3; API calls to a chosen replica as the owner; the database read as recorded."""

    def __init__(self, topology: Topology, root: Path, ray_tmp: Path) -> None:
        self.h1, self.h2, self.h3 = topology.hosts[:3]
        self.root, self.ray_tmp = root, ray_tmp
        self.token = root / "ray-token"
        self.postgres = PostgresServer(host=self.h3.address, port=PG_PORT)
        self.store = SeaweedCluster(root / "s3", ip=self.h3.address)
        self.ray_address = f"{self.h3.address}:{RAY_PORT}"
        self.replicas = [ClusterProcess(root / "server", workers=SLOTS, host=host.address)
                         for host in (self.h1, self.h2)]
        self.run_log: RunLog | None = None
        self.database = ""
        self._started: list = []

    def host_of(self, replica: ClusterProcess) -> Host:
        return self.h1 if replica is self.replicas[0] else self.h2

    # -- bringing it up -------------------------------------------------------------------------

    def start(self) -> None:
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        with self.h3.entered():
            self.postgres.start()
            self._started.append(self.postgres)
            self.database = self.postgres.create_database()
            self.store.start()
            self._started.append(self.store)
            self._run(["ray", "start", "--head", "--node-ip-address", self.h3.address,
                       "--port", str(RAY_PORT), "--num-cpus", "0", "--include-dashboard=false",
                       "--disable-usage-stats"], self.h3)
        self.run_log = RunLog(self.h3)
        self._started.append(self.run_log)
        for n, host in enumerate((self.h1, self.h2), 1):
            self._run([sys.executable, "-m", "qcompute", "node", "join", self.ray_address,
                       "--token-file", str(self.token), "--cpus", str(SLOTS),
                       "--label", f"zone=h{n}", "--node-ip-address", host.address], host)
        for replica in self.replicas:  # the first takes the scheduler's lock
            host = self.host_of(replica)
            replica.port = API_PORT  # the same port on each host
            replica.env = _process_env(self.ray_tmp / host.name, **self._settings(),
                                       QCOMPUTE_SERVER_HOST=host.address)
            with host.entered():
                replica.start(timeout=180)
            self._started.append(replica)

    def _settings(self) -> dict[str, str]:
        return {"QCOMPUTE_SERVER_EXECUTOR": "ray", "QCOMPUTE_SERVER_RAY_ADDRESS": self.ray_address,
                "QCOMPUTE_SERVER_RAY_TOKEN_FILE": str(self.token),
                "QCOMPUTE_SERVER_DATABASE_URL": self.database,
                "QCOMPUTE_SERVER_STORAGE": "external", "QCOMPUTE_SERVER_S3_URL": self.store.url,
                "QCOMPUTE_SERVER_S3_ADMIN_ACCESS_KEY": self.store.admin_key,
                "QCOMPUTE_SERVER_S3_ADMIN_SECRET_KEY": self.store.admin_secret,
                "QCOMPUTE_SERVER_LEADER_RETRY_SECONDS": "1",
                "QCOMPUTE_SERVER_KILL_GRACE_SECONDS": "2",
                "QCOMPUTE_SERVER_INSTANCE_RO_PATHS": json.dumps([sys.prefix])}

    def _run(self, command: list[str], host: Host) -> None:
        """A command that starts daemons in ``host`` (``ray start``), Ray's token and files set."""
        env = _process_env(self.ray_tmp / host.name, RAY_AUTH_MODE="token",
                           RAY_AUTH_TOKEN_PATH=str(self.token))
        command = [shutil.which(command[0], path=env["PATH"]) or command[0], *command[1:]]
        with host.entered():
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"

    def stop(self) -> None:
        """Stop what was started, in reverse (the caller kills what is left in the hosts)."""
        for part in reversed(self._started):
            if isinstance(part, ClusterProcess):
                with self.host_of(part).entered():
                    part.stop()
            else:
                part.stop()
        self._started = []

    # -- API and records ------------------------------------------------------------------------

    def call(self, replica: ClusterProcess, method: str, path: str, **kw) -> requests.Response:
        """A request to ``replica``, sent from its own host."""
        headers = {"Authorization": read_token(replica.config), **kw.pop("headers", {})}
        kw.setdefault("timeout", 60)
        with self.host_of(replica).entered():
            return requests.request(method, replica.url + path, headers=headers, **kw)

    def role(self, replica: ClusterProcess) -> str:
        return self.call(replica, "GET", "/health", timeout=5).json()["role"]

    def submit(self, replica: ClusterProcess, command: str,
               constants: dict[str, str] | None = None, **fields) -> str:
        constants = {**(constants or {}), "DOCKER_CMD": command}
        doc = {"name": "replicas", "profile": "docker-batch", **fields,
               "constants": [{"key": k, "value": v} for k, v in constants.items()]}
        reply = self.call(replica, "POST", "/tasks", json=doc)
        assert reply.status_code == 201, reply.text
        return reply.json()["uuid"]

    def final(self, replica: ClusterProcess, uuid: str, timeout: float = 180) -> dict:
        return wait_for(lambda: (t := self.call(replica, "GET", f"/tasks/{uuid}").json())
                        ["state"] in ENDED and t, timeout, f"task {uuid} ended")

    def query(self, statement: str, **params) -> list:
        """Rows of the shared database, read from host 3 (a connection per call)."""
        engine = create_engine(self.database, poolclass=NullPool)
        try:
            with self.h3.entered(), engine.connect() as db:
                return db.execute(text(statement), params).all()
        finally:
            engine.dispose()

    def explain(self, uuids: list[str]) -> str:
        """The tasks' instances as recorded, their output, the runs logged: for a failure."""
        lines = [f"runs logged: {dict(self.run_log.runs)}"]
        for uuid in uuids:
            lines += [str(row) for row in self.query(
                "SELECT i.instance_id, i.state, i.attempt, i.infra_failures, i.error, i.node "
                "FROM instances i JOIN tasks t ON t.id = i.task_id WHERE t.uuid = :uuid",
                uuid=uuid)]
            for stream in ("stdout", "stderr"):
                lines.append(self.call(self.replicas[1], "GET", f"/tasks/{uuid}/{stream}")
                             .text[-1500:])
        return "\n".join(lines)

    def logs(self) -> str:
        log = self.root / "server" / "server.log"
        return log.read_text(errors="replace")[-6000:] if log.exists() else ""
