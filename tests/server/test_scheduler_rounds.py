"""What one scheduler round costs in SQL: the rows of all its events come in one query."""
from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import event

from qcompute.server.executors.base import Finished, InstanceKey, Phase
from qcompute.server.scheduler import _STOP, _Wake

from .conftest import serving


@pytest.fixture
def wide(tmp_path, database_url):
    with serving(tmp_path, capacity=30) as running:
        yield running


def paused(cluster):
    """The cluster's scheduler, its loop stopped: the test runs rounds itself, alone."""
    scheduler = cluster.client.app.state.ctx.scheduler
    scheduler._events.put(_STOP)
    scheduler._thread.join(timeout=10)
    return scheduler


@contextlib.contextmanager
def statements(engine):
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        seen.append(" ".join(statement.split()))
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_round_of_many_ends_reads_their_rows_in_one_query(wide):
    tasks = [wide.submit("true", instanceCount=10) for _ in range(3)]
    keys = [key for uuid in tasks for key in wide.wait_dispatched(uuid, 10)]
    scheduler = paused(wide)
    events = [Phase(key, "running") for key in keys] + \
        [Finished(key, exit_code=0) for key in keys]
    with statements(scheduler.sessions.kw["bind"]) as seen:
        scheduler._round(events)  # as the loop runs it when all 60 events were waiting
    reads = [s for s in seen if "WHERE tasks.uuid IN" in s]
    assert len(reads) == 1, seen
    for uuid in tasks:
        assert wide.task(uuid)["state"] == "Success"
        wide.assert_counts_match_instances(uuid)


def test_an_event_of_a_replaced_attempt_is_ignored_in_a_shared_round(wide):
    first, second = wide.submit("true"), wide.submit("true")
    (old,), (other,) = wide.wait_dispatched(first, 1), wide.wait_dispatched(second, 1)
    scheduler = paused(wide)
    stale = InstanceKey(old.task_uuid, old.instance_id, old.attempt + 5)  # no such attempt
    scheduler._round([Finished(stale, exit_code=1), Finished(other, exit_code=0)])
    assert wide.task(second)["state"] == "Success"
    assert wide.task(first)["state"] not in ("Failure", "Success")  # the stale end was dropped


def test_a_dispatch_reads_each_owner_once_and_writes_its_instances_in_one_batch(wide):
    scheduler = paused(wide)
    uuids = [wide.submit("true", instanceCount=10) for _ in range(2)]  # queued, not dispatched
    with statements(scheduler.sessions.kw["bind"]) as seen:
        specs, _ = scheduler._round([_Wake()])
    assert len(specs) == 20
    owners = [s for s in seen if s.startswith("SELECT") and "FROM users" in s]
    updates = [s for s in seen if s.startswith("UPDATE instances")]
    assert len(owners) == 1, owners
    # the first instance, flushed by the owner's read, then the other 19 in one executemany
    assert len(updates) == 2, updates
    for spec in specs:
        assert spec.s3.secret_key == wide.headers["Authorization"]  # the owner's identity
    assert {spec.task_uuid for spec in specs} == set(uuids)


def test_the_next_dispatch_uses_a_rotated_token(wide):
    scheduler = paused(wide)
    first = wide.submit("true")
    (spec,), _ = scheduler._round([_Wake()])
    assert spec.s3.secret_key == wide.headers["Authorization"]
    rotated = wide.post(f"/admin/users/{spec.s3.access_key}/token")
    assert rotated.status_code == 200, rotated.text
    wide.headers["Authorization"] = rotated.json()["token"]
    second = wide.submit("true")
    (again,), _ = scheduler._round([_Wake()])
    assert (spec.task_uuid, again.task_uuid) == (first, second)
    assert again.s3.secret_key == rotated.json()["token"] != spec.s3.secret_key
