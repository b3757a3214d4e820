"""API tests: TestClient on a temporary database, each test once on SQLite and once on
PostgreSQL (the ``database`` fixture; ``-m "not postgres"`` runs the SQLite half alone).

The executor is a controllable fake so each lifecycle step can be asserted; real processes and
real S3 are exercised by tests/server/test_runner*.py and tests/e2e.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from qcompute.server.app import create_app
from qcompute.server.bootstrap import client_config_path, read_token
from qcompute.server.executors.base import (Executor, Finished, InstanceKey, InstanceSpec, Output,
                                            Phase, S3Access, SnapshotDone, SnapshotRequest)
from qcompute.server.settings import ServerSettings
from tests.helpers import wait_for  # noqa: F401 (the server tests import it from here)


class StubStorage:
    """Storage without S3: records the identities the server provisions."""

    endpoint_url = "http://127.0.0.1:9"
    create_bucket_url = None
    admin_access = None

    def __init__(self) -> None:
        self.identities: dict[str, tuple[str, str | None]] = {}
        self.removed: list[str] = []
        self.prepared: list[str] = []  # result buckets
        self.buckets: dict[str, int] = {}  # what GET /info reads: name -> bytes
        self.down = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def describe(self) -> str:
        return "stub storage"

    def check(self) -> str | None:
        return "S3 is down" if self.down else None

    def owner_access(self, email: str, token: str, stored=None) -> S3Access:
        return S3Access(self.endpoint_url, email, token)

    def user_keys(self, email: str, stored):
        return None

    def usage(self, prefix: str):
        """From ``buckets`` (name -> bytes): the test says what S3 holds."""
        from qcompute.server.storage import BucketUsage

        if self.down:
            return None
        mine = [size for name, size in self.buckets.items() if name.startswith(prefix)]
        return BucketUsage(len(mine), sum(mine))

    def prepare_result_bucket(self, name: str) -> None:
        if self.down:
            raise OSError("S3 is down")
        self.prepared.append(name)

    def provision_user(self, email: str, token: str, bucket_prefix: str | None) -> None:
        self.identities[email] = (token, bucket_prefix)

    def ensure_user(self, email: str, token: str, bucket_prefix: str | None, stored) -> None:
        return self.provision_user(email, token, bucket_prefix)

    def remove_user(self, email: str) -> None:
        self.identities.pop(email, None)
        self.removed.append(email)


class FakeExecutor(Executor):
    """Records submitted specs; tests drive the events."""

    sandboxed = True  # as a real cluster with bubblewrap: users may be added
    isolation = "fake executor (tests)"

    def __init__(self, on_event, capacity: int = 2) -> None:
        super().__init__(on_event)
        self._capacity = capacity
        self.specs: dict[InstanceKey, InstanceSpec] = {}
        self.cancelled: list[InstanceKey] = []
        self.submitted = threading.Event()
        self.snapshots: list[tuple[InstanceKey, SnapshotRequest]] = []  # control calls, in order
        self.periodic: list[tuple[InstanceKey, int, SnapshotRequest | None]] = []
        self.refreshed: list[InstanceKey] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, spec: InstanceSpec) -> None:
        self.specs[spec.key] = spec
        self.submitted.set()

    def cancel(self, key: InstanceKey) -> None:
        self.cancelled.append(key)
        self.specs.pop(key, None)
        self.on_event(Finished(key, exit_code=-15, cancelled=True))

    def _check_running(self, key: InstanceKey) -> None:
        if key not in self.specs:
            raise KeyError(f"instance {key} is not running here")

    def snapshot(self, key: InstanceKey, request: SnapshotRequest) -> None:
        self._check_running(key)
        self.snapshots.append((key, request))

    def set_periodic_snapshot(self, key: InstanceKey, interval_sec: int,
                              request: SnapshotRequest | None) -> None:
        self._check_running(key)
        self.periodic.append((key, interval_sec, request))

    def refresh_resources(self, key: InstanceKey) -> None:
        self._check_running(key)
        self.refreshed.append(key)

    def running(self) -> set[InstanceKey]:
        return set(self.specs)

    def shutdown(self) -> None:
        self.specs.clear()

    # test helpers
    def keys_of(self, task_uuid: str) -> list[InstanceKey]:
        return sorted((k for k in self.specs if k.task_uuid == task_uuid),
                      key=lambda k: k.instance_id)

    def start(self, key: InstanceKey) -> None:
        """The instance's command starts (it stays running)."""
        self.on_event(Phase(key, "running"))

    def snapshot_done(self, key: InstanceKey, snapshot_id: str, *, ok: bool = True,
                      error: str | None = None, keys: tuple[str, ...] = ("out.txt",),
                      size: int = 10) -> None:
        self.on_event(SnapshotDone(key, snapshot_id, ok=ok, error=error, files=len(keys),
                                   bytes=size if ok else 0, size=size, keys=keys))

    def run(self, key: InstanceKey, *, exit_code: int = 0, stdout: str = "",
            error: str | None = None) -> None:
        self.on_event(Phase(key, "running"))
        if stdout:
            self.on_event(Output(key, "stdout", stdout))
        self.on_event(Finished(key, exit_code=exit_code, error=error, exec_time_sec=0.5))
        self.specs.pop(key, None)  # as a real executor: running until its Finished is queued




class Cluster:
    def __init__(self, client: TestClient, executor: FakeExecutor, storage: StubStorage,
                 token: str) -> None:
        self.client, self.executor, self.storage = client, executor, storage
        self.headers = {"Authorization": token}

    def get(self, path: str, **kw):
        return self.client.get(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, **kw):
        return self.client.post(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def put(self, path: str, **kw):
        return self.client.put(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def delete(self, path: str, **kw):
        return self.client.delete(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def submit(self, command: str = "echo hi", **fields) -> str:
        doc = {"name": "t", "profile": "docker-batch",
               "constants": [{"key": "DOCKER_CMD", "value": command}], **fields}
        response = self.post("/tasks", json=doc)
        assert response.status_code == 201, response.text
        return response.json()["uuid"]

    def task(self, uuid: str) -> dict:
        response = self.get(f"/tasks/{uuid}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_state(self, uuid: str, state: str) -> dict:
        return wait_for(lambda: (t := self.task(uuid))["state"] == state and t)

    def assert_counts_match_instances(self, uuid: str) -> None:
        """The task's kept per-state counts equal a recount of its instances."""
        from collections import Counter

        from sqlalchemy import select

        from qcompute.server.db.models import Instance, Task

        with self.client.app.state.ctx.sessions() as session:
            task = session.scalar(select(Task).where(Task.uuid == uuid))
            states = session.scalars(select(Instance.state).where(Instance.task_id == task.id))
            assert task.instance_counts == dict(Counter(states))

    def wait_dispatched(self, uuid: str, count: int) -> list[InstanceKey]:
        return wait_for(lambda: len(keys := self.executor.keys_of(uuid)) >= count and keys)


def database_bytes(cluster: Cluster) -> bytes:
    """The SQLite database as it is on disk: the main file and its write-ahead log."""
    path = cluster.client.app.state.ctx.settings.data_dir / "qcompute.db"
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def make_cluster(tmp_path, capacity: int = 2, **settings_kw):
    settings = ServerSettings(data_dir=tmp_path, storage="external", **settings_kw)
    storage = StubStorage()
    holder: dict[str, FakeExecutor] = {}

    def factory(on_event):
        holder["executor"] = FakeExecutor(on_event, capacity)
        return holder["executor"]

    app = create_app(settings, storage=storage, executor_factory=factory)
    return settings, app, storage, holder


@contextlib.contextmanager
def serving(tmp_path, **kw) -> Iterator[Cluster]:
    """A started cluster (see :func:`make_cluster`), with the owner's token."""
    settings, app, storage, holder = make_cluster(tmp_path, **kw)
    with TestClient(app) as client:
        token = read_token(client_config_path(settings))
        yield Cluster(client, holder["executor"], storage, token)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _use_backend(request, monkeypatch) -> str:
    if request.param == "sqlite":
        monkeypatch.delenv("QCOMPUTE_SERVER_DATABASE_URL", raising=False)
        return ""
    postgres = request.getfixturevalue("postgres")
    url = postgres.create_database(template=postgres.template)
    monkeypatch.setenv("QCOMPUTE_SERVER_DATABASE_URL", url)
    return url


@pytest.fixture(params=BACKENDS)
def database_url(request, monkeypatch) -> str:
    """The test runs twice: on SQLite (``""``: the default file in the data dir) and on
    PostgreSQL (a fresh database, copied from the session's migrated template). Every
    ``ServerSettings`` the test builds reads the URL from ``$QCOMPUTE_SERVER_DATABASE_URL``."""
    return _use_backend(request, monkeypatch)


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(request) -> Iterator[str]:
    """:func:`database_url` for a module-scoped cluster."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _use_backend(request, monkeypatch)


def engine_url(database_url: str, tmp_path: Path) -> str:
    """An engine URL for a test that opens the database itself: ``database_url``, else a
    SQLite file in ``tmp_path``."""
    return database_url or f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
def cluster(tmp_path, database_url):
    with serving(tmp_path) as running:
        yield running


@pytest.fixture
def roomy(tmp_path, database_url):
    """4 executor slots and a 0.05 s scheduler tick (pools, jobs, timers)."""
    with serving(tmp_path, capacity=4, scheduler_tick_seconds=0.05) as running:
        yield running
