"""One request is one transaction: bulk submit is all-or-nothing, and an Idempotency-Key lets
exactly one request's work commit, even when a retry arrives while the first still runs."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from qcompute.server.api import tasks as tasks_api
import qcompute
from qcompute.server.db import make_engine, make_session_factory
from qcompute.server.db.models import (IdempotencyRecord, Instance, Task, TaskDependency,
                                       utcnow)

from .conftest import serving, wait_for

DOC = {"name": "t", "profile": "docker-batch", "instanceCount": 2,
       "constants": [{"key": "DOCKER_CMD", "value": "true"}]}


def _rows(cluster) -> dict[str, int]:
    with cluster.client.app.state.ctx.sessions() as session:
        return {model.__name__: session.scalar(select(func.count()).select_from(model))
                for model in (Task, Instance, TaskDependency, IdempotencyRecord)}


class Gate:
    """Wraps the service's submit_task: fails on the Nth call, or holds the Nth call until
    released (so that a second request can arrive while the first runs): after its rows are
    written, or before (``hold_before``: on SQLite a writer holds the write lock)."""

    def __init__(self, monkeypatch, *, fail_at: int = 0, hold_at: int = 0,
                 hold_before: bool = False) -> None:
        self.calls, self.fail_at, self.hold_at = 0, fail_at, hold_at
        self.hold_before = hold_before
        self.holding, self.release = threading.Event(), threading.Event()
        self._submit = tasks_api.service.submit_task
        monkeypatch.setattr(tasks_api.service, "submit_task", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.hold_before and self.calls == self.hold_at:
            self._hold()
        task = self._submit(*args, **kwargs)  # flushed: its rows are written
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        if not self.hold_before and self.calls == self.hold_at:
            self._hold()
        return task

    def _hold(self) -> None:
        self.holding.set()
        assert self.release.wait(10)


def _in_thread(fn):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()))
    thread.start()
    return thread, result


@pytest.fixture
def cluster(tmp_path, database_url):
    with serving(tmp_path) as running:
        yield running


@pytest.fixture
def patient(tmp_path, database_url):
    """A retry waits up to 5 s for the first request to finish."""
    with serving(tmp_path, idempotency_wait_seconds=5) as running:
        yield running


def test_a_failure_in_the_middle_of_a_bulk_leaves_nothing(cluster, monkeypatch):
    gate = Gate(monkeypatch, fail_at=3)
    headers = {"Idempotency-Key": "bulk-1"}
    failed = cluster.post("/tasks", json=[DOC] * 5, headers={**headers, "X-Request-ID": "r-7"})
    assert failed.status_code == 500 and failed.json()["code"] == "internal_error"
    assert failed.headers["X-Request-ID"] == "r-7" and "r-7" in failed.json()["message"]
    assert _rows(cluster) == {"Task": 0, "Instance": 0, "TaskDependency": 0,
                              "IdempotencyRecord": 0}  # the key was given back too
    gate.fail_at = 0
    retried = cluster.post("/tasks", json=[DOC] * 5, headers=headers)
    assert retried.status_code == 200
    assert [r["statusCode"] for r in retried.json()] == [201] * 5
    assert _rows(cluster) == {"Task": 5, "Instance": 10, "TaskDependency": 0,
                              "IdempotencyRecord": 1}


def test_a_refused_item_leaves_none_of_its_rows(cluster):
    """An item refused after its task row was written (its dependencies are checked then)
    is rolled back to its savepoint; the items around it stay."""
    job = cluster.post("/jobs/", json={"name": "j", "useDependencies": True}).json()["uuid"]
    parent = cluster.submit("true", jobUuid=job)
    child = {**DOC, "jobUuid": job, "dependencies": {"dependsOn": [parent]}}
    orphan = {**DOC, "dependencies": {"dependsOn": [parent]}}  # no job: refused after flush
    reply = cluster.post("/tasks", json=[child, orphan, DOC]).json()
    assert [r["statusCode"] for r in reply] == [201, 400, 201]
    assert "job" in reply[1]["message"]
    assert _rows(cluster) == {"Task": 3, "Instance": 5, "TaskDependency": 1,
                              "IdempotencyRecord": 0}


def test_a_retry_during_the_first_request_replays_its_answer(patient, monkeypatch):
    gate = Gate(monkeypatch, hold_at=2)
    headers = {"Idempotency-Key": "bulk-2"}
    first, first_reply = _in_thread(lambda: patient.post("/tasks", json=[DOC] * 3,
                                                         headers=headers))
    assert gate.holding.wait(5)
    second, second_reply = _in_thread(lambda: patient.post("/tasks", json=[DOC] * 3,
                                                           headers=headers))
    wait_for(lambda: _rows(patient)["IdempotencyRecord"] == 1)
    gate.release.set()
    first.join(10), second.join(10)
    one, two = first_reply["value"], second_reply["value"]
    assert one.status_code == two.status_code == 200
    assert two.json() == one.json() and two.headers["Idempotent-Replayed"] == "true"
    assert gate.calls == 3  # the retry did no work of its own
    assert _rows(patient)["Task"] == 3


def test_a_retry_that_waits_too_long_gets_409_then_the_replay(tmp_path, database_url,
                                                              monkeypatch):
    with serving(tmp_path, idempotency_wait_seconds=0.2) as cluster:
        gate = Gate(monkeypatch, hold_at=1)
        headers = {"Idempotency-Key": "bulk-3"}
        first, first_reply = _in_thread(lambda: cluster.post("/tasks", json=[DOC] * 2,
                                                             headers=headers))
        assert gate.holding.wait(5)
        busy = cluster.post("/tasks", json=[DOC] * 2, headers=headers)
        assert busy.status_code == 409 and busy.json()["code"] == "idempotency_key_in_use"
        assert busy.headers["Retry-After"] == "1"
        gate.release.set()
        first.join(10)
        replay = cluster.post("/tasks", json=[DOC] * 2, headers=headers)
        assert replay.json() == first_reply["value"].json()
        assert _rows(cluster)["Task"] == 2


def test_a_retry_does_the_work_when_the_first_request_fails(patient, monkeypatch):
    gate = Gate(monkeypatch, hold_at=1)
    headers = {"Idempotency-Key": "bulk-4"}
    first, first_reply = _in_thread(lambda: patient.post("/tasks", json=[DOC] * 2,
                                                         headers=headers))
    assert gate.holding.wait(5)
    gate.fail_at = 2  # the first request fails once released
    second, second_reply = _in_thread(lambda: patient.post("/tasks", json=[DOC] * 2,
                                                           headers=headers))
    gate.release.set()
    first.join(10)
    gate.fail_at = 0
    second.join(10)
    assert first_reply["value"].status_code == 500
    assert second_reply["value"].status_code == 200
    assert "Idempotent-Replayed" not in second_reply["value"].headers
    assert _rows(patient)["Task"] == 2


def test_abandoned_work_cannot_commit_after_its_key_was_taken_over(patient, monkeypatch):
    """The first request outlives its lease (as if its server had hung): a retry takes the
    key over and answers; the first request's work then rolls back. (It is held before it
    writes, and the request is a single task (a bulk's first savepoint writes): on SQLite a
    request that has written holds the write lock, so nothing else can write, or take a key
    over, until it ends.)"""
    gate = Gate(monkeypatch, hold_at=1, hold_before=True)
    headers = {"Idempotency-Key": "bulk-5"}
    first, first_reply = _in_thread(lambda: patient.post("/tasks", json=DOC,
                                                         headers=headers))
    assert gate.holding.wait(5)
    lease = patient.client.app.state.ctx.settings.idempotency_lease_seconds
    with patient.client.app.state.ctx.sessions() as session:  # the claim is now stale
        session.execute(update(IdempotencyRecord).values(
            created_at=utcnow() - timedelta(seconds=lease + 1)))
        session.commit()
    gate.hold_at = 0
    retry = patient.post("/tasks", json=DOC, headers=headers)
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers
    gate.release.set()
    first.join(10)
    late = first_reply["value"]
    assert late.status_code == 409 and late.json()["code"] == "idempotency_key_in_use"
    assert _rows(patient)["Task"] == 1  # only the retry's
    replay = patient.post("/tasks", json=DOC, headers=headers)
    assert replay.json() == retry.json()


def test_sqlite_savepoints_live_inside_the_transaction(tmp_path):
    """The engine's recipe, also on a connection that served AUTOCOMMIT (SQLAlchemy hands it
    back with sqlite3's own transaction control on again)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as db:
        db.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.exec_driver_sql("VACUUM")  # refused inside a transaction: none was begun
    with engine.connect() as db:
        db.begin()
        with db.begin_nested():
            db.exec_driver_sql("INSERT INTO t VALUES (1)")
        db.rollback()  # the released savepoint goes with the transaction
        assert db.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0
    engine.dispose()


def test_every_response_names_its_request(cluster):
    fresh = cluster.get("/versions").headers["X-Request-ID"]
    assert len(fresh) == 32 and int(fresh, 16) >= 0  # a new uuid4, in hex
    assert cluster.get("/versions").headers["X-Request-ID"] != fresh
    assert cluster.get("/nowhere", headers={"X-Request-ID": "mine"}).headers["X-Request-ID"] \
        == "mine"


# A writer in a process of its own, as the scheduler writes: one session, transactions that read
# before they write, two commits in a row. It prints each value once its commit has returned.
# "hold": it then writes one more transaction and waits before its commit; "loop": it commits
# until it is killed.
_WRITER = """
import sys, time
from sqlalchemy import text
from qcompute.server.db import make_engine, make_session_factory
sessions = make_session_factory(make_engine(sys.argv[1]), None)

def step(session):
    n = session.execute(text("SELECT n FROM counter")).scalar() + 1
    session.execute(text("UPDATE counter SET n = :n"), {"n": n})
    session.execute(text("INSERT INTO log (n) VALUES (:n)"), {"n": n})
    return n

with sessions() as session:
    while True:
        n = step(session)
        session.commit()
        n = step(session)
        session.commit()
        print(n, flush=True)
        if sys.argv[2] == "hold":
            print(step(session), "written", flush=True)
            time.sleep(60)
"""


def _killed_writer(url: str, mode: str, acks: int) -> list[str]:
    """Run the writer until it has printed ``acks`` lines, SIGKILL it: the lines it printed."""
    env = {**os.environ, "PYTHONPATH": str(Path(qcompute.__file__).parents[1])}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, url, mode], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        lines = [writer.stdout.readline().strip() for _ in range(acks)]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    return lines + writer.stdout.read().split("\n")[:-1]


def _committed(url: str) -> tuple[int, list[int]]:
    engine = make_engine(url)  # this process opens the file anew (and recovers its WAL)
    with engine.connect() as db:
        counted = db.execute(text("SELECT n FROM counter")).scalar()
        logged = list(db.execute(text("SELECT n FROM log ORDER BY n")).scalars())
    engine.dispose()
    return counted, logged


@pytest.mark.parametrize("mode", ["hold", "loop"])
def test_sqlite_commits_survive_a_sigkill_and_nothing_else_does(tmp_path, mode):
    """The recipe on a file, across processes: a transaction the writer committed is in the
    file after a SIGKILL, whole; one it had written but not committed is not there at all."""
    for attempt in range(3 if mode == "hold" else 8):
        url = f"sqlite:///{tmp_path / f'{mode}-{attempt}.db'}"
        engine = make_engine(url)
        with engine.begin() as db:
            db.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
            db.exec_driver_sql("CREATE TABLE log (n INTEGER PRIMARY KEY)")
            db.exec_driver_sql("INSERT INTO counter VALUES (0)")
        engine.dispose()
        if mode == "hold":  # killed with a written, uncommitted transaction open
            acked, written = _killed_writer(url, mode, 2)
            assert written.endswith("written")
            assert _committed(url) == (int(acked), list(range(1, int(acked) + 1)))
        else:  # killed anywhere in its loop: at most the two commits after its last ack
            acked = int(_killed_writer(url, mode, random.randint(1, 200))[-1])
            counted, logged = _committed(url)
            assert counted - acked in (0, 1, 2) and logged == list(range(1, counted + 1))
