"""``GET /health``: each part (database, storage, executor, scheduler) ok, or 503 naming the one
that is down and why; the fields it answered before stay."""
from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from qcompute.server.app import create_app
from qcompute.server.executors.local import LocalExecutor
from qcompute.server.settings import ServerSettings

from .conftest import StubStorage

PARTS = ["database", "storage", "executor", "scheduler"]


def test_a_healthy_cluster_says_ok_for_every_part(cluster):
    response = cluster.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["parts"] == {part: "ok" for part in PARTS}
    assert list(body["parts"]) == PARTS
    assert body["storageProcess"] == "stub storage" and body["executor"] == "local"
    assert {"version", "storage", "sandboxed", "isolation", "capacity", "running",
            "nodes"} <= set(body)


def test_storage_down_is_a_503_naming_it_then_ok_again(cluster):
    cluster.storage.down = True
    response = cluster.client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["parts"] == {"database": "ok", "storage": "down: S3 is down",
                             "executor": "ok", "scheduler": "ok"}
    assert body["capacity"] == 2 and body["storageProcess"] == "stub storage"

    cluster.storage.down = False
    assert cluster.client.get("/health").status_code == 200


def test_an_unreachable_database_is_named(cluster):
    ctx = cluster.client.app.state.ctx
    sessions = ctx.sessions
    ctx.sessions = sessionmaker(create_engine("sqlite:////nonexistent-qcompute-dir/x.db"))
    try:
        response = cluster.client.get("/health")
    finally:
        ctx.sessions = sessions
    assert response.status_code == 503
    parts = response.json()["parts"]
    assert parts["database"].startswith("down: OperationalError")
    assert "unable to open database file" in parts["database"]
    assert [part for part, state in parts.items() if state != "ok"] == ["database"]


def test_a_stopped_scheduler_and_its_shut_down_executor_are_named(tmp_path, database_url):
    settings = ServerSettings(data_dir=tmp_path, storage="external")
    app = create_app(settings, storage=StubStorage(),
                     executor_factory=lambda on_event: LocalExecutor(on_event, capacity=1))
    with TestClient(app) as client:
        assert client.get("/health").json()["parts"]["executor"] == "ok"
        app.state.ctx.scheduler.stop()  # its loop ends, and it shuts the executor down
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["parts"] == {
            "database": "ok", "storage": "ok", "executor": "down: shut down",
            "scheduler": "down: its thread has stopped"}


def test_an_executor_whose_workers_cannot_start_is_named(tmp_path):
    executor = LocalExecutor(lambda event: None, capacity=1, python=str(tmp_path / "no-python"))
    try:
        assert executor.problem() == (f"runner workers cannot start: {tmp_path / 'no-python'} "
                                      "is not executable")
    finally:
        executor.shutdown()
    assert executor.problem() == "shut down"


def _instance_of(data_dir) -> str:
    settings = ServerSettings(data_dir=data_dir, storage="external")
    app = create_app(settings, storage=StubStorage(),
                     executor_factory=lambda on_event: LocalExecutor(on_event, capacity=1))
    with TestClient(app) as client:
        return client.get("/health").json()["instance"]


def test_health_carries_the_instance_id_made_once_per_data_dir(tmp_path):
    first = _instance_of(tmp_path / "a")
    assert len(first) == 32 and (tmp_path / "a" / "instance-id").read_text() == first + "\n"
    assert _instance_of(tmp_path / "a") == first  # a restart keeps it
    assert _instance_of(tmp_path / "b") != first  # another data dir: another cluster
