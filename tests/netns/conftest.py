"""Three hosts on this machine (network namespaces on a bridge, ``topology.py``), one topology per
test session. ``test_hosts.py`` uses two, as docs/deployment.rst step 2 sets them up:

* host 1 (10.213.0.1): ``qcompute server --executor ray`` on host 1's address: the API, the
  scheduler, SQLite, the embedded S3 (SeaweedFS on loopback, its S3 port relayed on host 1's
  address) and the Ray head it starts (``ray_node_ip`` = its host), with 2 slots;
* host 2 (10.213.0.2): a Ray node added with ``qcompute node join`` (token auth, label
  ``zone=h2``), 2 slots.

Everything runs from this checkout (same interpreter and paths: the namespaces share the
filesystem). The test process reaches the hosts by entering host 1's namespace for each call.
Without root or ``ip netns`` the tests fail, saying why: they never skip.

``test_replicas.py`` uses all three, with a deployment of its own (``replicated.py``): two API
replicas on hosts 1 and 2, PostgreSQL, S3 and the Ray head on host 3. Each deployment lives for
its test module; when it ends, every process left in the hosts is killed, and the namespaces
stay for the next one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import qcompute
from qcompute.server.bootstrap import read_token
from qcompute.server.db.models import Instance, Task
from qcompute.server.testing import ClusterProcess
from tests import helpers

from .topology import Host, Topology, TopologyError

API_PORT = 8801  # the namespaces are fresh: every port is free in them
H1_SLOTS = H2_SLOTS = 2
# The head declares a node dead after 3 missed health checks 1 s apart (Ray's defaults: 5,
# 3 s apart), so a cut link is noticed in seconds.
RAY_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
              "RAY_health_check_failure_threshold": "3"}
ENDED = ("Success", "Failure", "Cancelled")
CHECKOUT = str(Path(qcompute.__file__).resolve().parents[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return helpers.wait_for(predicate, timeout, what, interval=0.2)  # the API, not too often


def _process_env(ray_tmp: Path, **more: str) -> dict[str, str]:
    """This checkout's qcompute and ray, Ray's files in ``ray_tmp`` (never the shared /tmp/ray)."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    pythonpath = os.pathsep.join(filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    return {**env, "PATH": path, "PYTHONPATH": pythonpath, "RAY_TMPDIR": str(ray_tmp), **more}


class Deployment:
    """The running hosts: ``h1``, ``h2``, the ``server`` on h1 (with its embedded S3); API calls
    as the cluster's owner; the database read as recorded."""

    def __init__(self, topology: Topology, root: Path, ray_tmp: Path) -> None:
        self.topology = topology
        self.h1, self.h2 = topology.hosts[:2]
        self.root, self.ray_tmp = root, ray_tmp
        self.server = ClusterProcess(root / "server", workers=H1_SLOTS, host=self.h1.address)
        self.server.port = API_PORT
        self.database = f"sqlite:///{root / 'server' / 'qcompute.db'}"
        self._engine = None

    def _server_settings(self) -> dict[str, str]:
        return {"QCOMPUTE_SERVER_EXECUTOR": "ray", "QCOMPUTE_SERVER_KILL_GRACE_SECONDS": "2",
                "QCOMPUTE_SERVER_INSTANCE_RO_PATHS": json.dumps([sys.prefix]), **RAY_HEALTH}

    # -- bringing it up -------------------------------------------------------------------------

    def start(self) -> None:
        with self.h1.entered():  # the processes started meanwhile are host 1's
            self.server.env = _process_env(self.ray_tmp / "h1", **self._server_settings(),
                                           QCOMPUTE_SERVER_HOST=self.h1.address)
            self.server.start(timeout=180)
        self.join_h2()

    @property
    def ray_address(self) -> str:
        return (self.server.data_dir / "ray-address").read_text().strip()

    def join_h2(self) -> None:
        """``qcompute node join`` on host 2 (again after a cut: the old node is dead to Ray,
        and its processes are killed first); returns once the API lists the node."""
        self.h2.kill_all()
        self.h2.set_link(True)
        command = [sys.executable, "-m", "qcompute", "node", "join", self.ray_address,
                   "--token-file", str(self.server.data_dir / "ray-token"),
                   "--cpus", str(H2_SLOTS), "--label", "zone=h2",
                   "--node-ip-address", self.h2.address]
        with self.h2.entered():
            done = subprocess.run(command, env=_process_env(self.ray_tmp / "h2"),
                                  capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"node join failed:\n{done.stdout}\n{done.stderr}"
        wait_for(lambda: self.node_of(self.h2), 60, "host 2's node listed by the API")

    def stop(self) -> None:
        with self.h1.entered():
            self.server.stop()

    # -- API and records ------------------------------------------------------------------------

    def call(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": read_token(self.server.config), **kw.pop("headers", {})}
        with self.h1.entered():
            return requests.request(method, self.server.url + path, headers=headers,
                                    timeout=60, **kw)

    def submit(self, command: str, constants: dict[str, str] | None = None, **fields) -> str:
        constants = {**(constants or {}), "DOCKER_CMD": command}
        doc = {"name": "netns", "profile": "docker-batch", **fields,
               "constants": [{"key": k, "value": v} for k, v in constants.items()]}
        reply = self.call("POST", "/tasks", json=doc)
        assert reply.status_code == 201, reply.text
        return reply.json()["uuid"]

    def task(self, uuid: str) -> dict:
        reply = self.call("GET", f"/tasks/{uuid}")
        assert reply.status_code == 200, reply.text
        return reply.json()

    def wait_state(self, uuid: str, state: str, timeout: float = 120) -> dict:
        """The task once in ``state``; an error naming its instances' errors and output if it
        ends in another."""
        task = wait_for(lambda: (t := self.task(uuid))["state"] in (state, *ENDED) and t,
                        timeout, f"task {uuid} {state}")
        if task["state"] != state:
            raise AssertionError(
                f"task {uuid} is {task['state']}, not {state}: {task.get('errors')}\n"
                + self.call("GET", f"/tasks/{uuid}/stdout").text[-2000:]
                + self.call("GET", f"/tasks/{uuid}/stderr").text[-2000:])
        return task

    def nodes(self) -> list[dict]:
        return self.call("GET", "/hardware-constraints").json().get("nodes", [])

    def node_of(self, host: Host) -> str | None:
        """The Ray node id of the live node at the host's address (None if there is none)."""
        return next((n["id"] for n in self.nodes() if n["address"] == host.address), None)

    def instances(self, uuid: str) -> list[Instance]:
        """The task's instances as the server recorded them (attempt, infra_failures, node)."""
        self._engine = self._engine or create_engine(self.database)
        with Session(self._engine) as session:
            task = session.scalar(select(Task).where(Task.uuid == uuid))
            return list(session.scalars(select(Instance).where(Instance.task_id == task.id)
                                        .order_by(Instance.instance_id)))

    @property
    def s3_url(self) -> str:
        """The embedded S3 as clients and instances are told to reach it (host 1's address)."""
        return f"http://{self.h1.address}:{self.server.s3_port}"

    def weed_pid(self) -> int:
        """The pid of the server's ``weed mini``, found among host 1's processes."""
        for pid in self.h1.pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and argv[0].endswith(b"/weed") and b"mini" in argv:
                return pid
        raise AssertionError("no weed mini among host 1's processes")

    def logs(self) -> str:
        """The tails of what the server and its SeaweedFS wrote, for a failure's message."""
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in (
            self.server.data_dir / "server.log", self.server.data_dir / "s3" / "weed.log")
            if path.exists())


@pytest.fixture(scope="session")
def topology():
    try:
        built = Topology(3).create()
    except TopologyError as exc:
        pytest.fail(f"cannot build the test hosts with ip netns: {exc}", pytrace=False)
    try:
        yield built
    finally:
        built.destroy()


@contextlib.contextmanager
def deployed(kind: type, topology: Topology, base: Path, ray_prefix: str) -> Iterator[Any]:
    """A deployment of ``kind`` on the hosts for one module: started (its time in
    ``started_in``), then stopped, and what is left in the hosts killed: Ray's processes,
    instances, a replica the test killed."""
    ray_tmp = Path(tempfile.mkdtemp(prefix=ray_prefix))  # short: Ray's socket paths live under it
    started = time.monotonic()
    running = kind(topology, base, ray_tmp)
    try:
        running.start()
        running.started_in = time.monotonic() - started
        yield running
    finally:
        try:
            running.stop()
        finally:
            for host in topology.hosts:
                host.kill_all()
            shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(topology, tmp_path_factory):
    with deployed(Deployment, topology, tmp_path_factory.mktemp("hosts"), "qcn-") as running:
        yield running
