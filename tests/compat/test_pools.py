"""The official SDK's pool calls: a static pool with a preparation task and a task inside, an
elastic pool resized by its work and changed live with commit(), retrieve, paging, close
(which cancels the pool's running task), delete.

A pool holds executor slots while it is open, and the cluster is shared with ``tests/e2e``: each
test closes (or deletes) its pools in ``finally``. The SDK has no ``Pool.wait()``; ``wait_for``
polls anything with ``update(True)`` and ``state``, so it serves pools too."""
from __future__ import annotations

import time
import uuid

import pytest
from qarnot.exceptions import MissingPoolException, QarnotGenericException

from tests.helpers import sh

from .helpers import wait_for

# The SDK calls its own deprecated Bucket.flush() on submit.
pytestmark = pytest.mark.filterwarnings("ignore:(flush|update) is deprecated as of 2.6.0")

POOL_FINAL = ("Closed", "Failure")


def _close(pool) -> None:
    """Close a pool the test may have left open (no-op once it is closed, failed or gone)."""
    if pool.uuid is None:
        return
    try:
        pool.update(True)
        if pool.state not in POOL_FINAL + ("Closing", "PendingDelete"):
            pool.close()
    except MissingPoolException:
        pass


def _until(probe, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.1)


def _wait_gone(qconn, pool_uuid: str, timeout: float = 10.0) -> None:
    """After delete() the pool is PendingDelete until the scheduler removes it (next tick)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pool = qconn.retrieve_pool(pool_uuid)
        except MissingPoolException:
            return
        assert pool.state == "PendingDelete"
        assert time.monotonic() < deadline, f"pool {pool_uuid} still there after delete()"
        time.sleep(0.1)


def test_static_pool_prepares_its_slot_then_runs_a_task(qconn):
    tag = f"compat-pool-{uuid.uuid4().hex[:8]}"
    pool = qconn.create_pool("compat-static", "docker-batch", 1)
    pool.constants["GREETING"] = "hello from the pool"
    # the SDK's attribute for preparationTask.commandLine
    pool.preparation_command_line = sh("echo preparing slot $SLOT_ID of $POOL_NAME; "
                                       "touch /share/prepared")  # /share: the pool's own
    pool.tags = [tag]
    try:
        pool.submit()
        assert pool.uuid and pool.state != "UnSubmitted"
        assert wait_for(pool, ["FullyExecuting"], timeout=30) == "FullyExecuting"
        assert pool.stdout() == "preparing slot 0 of compat-static\n"
        assert pool.stdout(0) == pool.stdout()
        assert pool.fresh_stdout() == "preparing slot 0 of compat-static\n"
        assert pool.fresh_stdout() == ""
        assert pool.total_slot_capacity == 1 and pool.running_instance_count == 1

        task = qconn.create_task("compat-in-pool", pool, 1)
        task.constants["DOCKER_CMD"] = sh('test -f /share/prepared && echo "$GREETING $INSTANCE_ID"')
        task.submit()
        assert wait_for(task) == "Success", task.errors
        assert task.stdout() == "hello from the pool 0\n"
        assert task.pool.uuid == pool.uuid  # Task.pool sends GET /pools/{uuid}

        again = qconn.retrieve_pool(pool.uuid)
        assert (again.name, again.profile, again.instancecount) == (
            "compat-static", "docker-batch", 1)
        assert again.preparation_command_line == pool.preparation_command_line
        assert again.constants["GREETING"] == "hello from the pool"
        assert again.is_elastic is False and again.tags == [tag]
        assert again.creation_date is not None

        assert [p.uuid for p in qconn.pools_page(tags=[tag]).page_data] == [pool.uuid]
        assert [p.uuid for p in qconn.all_pools(tags=[tag])] == [pool.uuid]
        assert [p.uuid for p in qconn.all_pools(tags=[tag], summary=False)] == [pool.uuid]
        assert pool.uuid in {p.uuid for p in qconn.all_pools()}  # summaries, no filter

        pool.close()
        assert wait_for(pool, POOL_FINAL, timeout=30) == "Closed"
        assert pool.total_slot_capacity == 0
        # a closed pool takes no new task: 400 pool_closed
        late = qconn.create_task("compat-too-late", pool, 1)
        late.constants["DOCKER_CMD"] = "true"
        with pytest.raises(QarnotGenericException, match="takes no new tasks"):
            late.submit()
    finally:
        _close(pool)
    pool_uuid = pool.uuid
    pool.delete()
    assert pool.uuid is None and pool.state == "Deleted"  # set locally by the SDK
    _wait_gone(qconn, pool_uuid)
    assert qconn.retrieve_task(task.uuid).state == "Success"  # a pool's tasks are kept
    task.delete()


def test_close_cancels_the_running_task_then_the_pool_is_closed(qconn):
    pool = qconn.create_pool("compat-close", "docker-batch", 1)
    try:
        pool.submit()
        assert wait_for(pool, ["FullyExecuting"], timeout=30) == "FullyExecuting"
        task = qconn.create_task("compat-cancelled-by-close", pool, 1)
        task.constants["DOCKER_CMD"] = "sleep 30"
        task.submit()
        assert wait_for(task, ["FullyExecuting"], timeout=30) == "FullyExecuting"
        started = time.monotonic()
        pool.close()
        assert wait_for(pool, POOL_FINAL, timeout=20) == "Closed"
        assert wait_for(task, timeout=5) == "Cancelled"
        assert time.monotonic() - started < 10, "close must stop the task, not wait for it"
        assert [(e.code, e.message) for e in task.errors] == [
            ("pool_closed", f"pool {pool.uuid} was closed before the task ended")]
        assert pool.total_slot_capacity == 0
    finally:
        _close(pool)
    pool.delete()
    task.delete()


def test_failed_preparation_fails_the_pool(qconn):
    pool = qconn.create_pool("compat-bad-prep", "docker-batch", 1)
    pool.preparation_command_line = sh("echo broken >&2; exit 2")
    try:
        pool.submit()
        assert wait_for(pool, POOL_FINAL, timeout=30) == "Failure"
        assert "exited with code 2" in pool.errors[0].message
        assert pool.stderr() == "broken\n"
    finally:
        _close(pool)
    pool.delete()


def test_elastic_pool_grows_for_its_task_and_takes_live_changes(qconn):
    pool = qconn.create_elastic_pool("compat-elastic", "docker-batch", minimum_total_slots=0,
                                     maximum_total_slots=2, minimum_idle_slots=0,
                                     minimum_idle_time_seconds=0, resize_factor=1,
                                     resize_period=0)
    try:
        pool.submit()
        # an elastic pool that wants no slot is open and FullyExecuting
        assert wait_for(pool, ["FullyExecuting"], timeout=30) == "FullyExecuting"
        assert pool.is_elastic is True and pool.elastic_maximum_slots == 2

        # each instance waits (10 s at most) for the other: only 2 slots at once let both pass
        task = qconn.create_task("compat-elastic-task", pool, 2)
        task.constants["DOCKER_CMD"] = sh(  # /share: the pool's directory, seen by its tasks
            "touch /share/$INSTANCE_ID; n=0; until [ -f /share/0 ] && [ -f /share/1 ]; do "
            "n=$((n+1)); [ $n -gt 200 ] && exit 1; sleep 0.05; done; echo elastic $INSTANCE_ID")
        task.submit()
        assert wait_for(task) == "Success", task.errors
        assert sorted(task.stdout().splitlines()) == ["elastic 0", "elastic 1"]

        # idle for minIdleTimeSeconds=0: it gives its slots back
        def shrunk() -> bool:
            pool.update(True)
            return pool.total_slot_capacity == 0

        _until(shrunk, "the pool's shrink")

        # the documented way to change a running pool: set the elastic fields, commit() (PUT)
        pool.update(True)
        pool.elastic_maximum_slots = 1
        pool.elastic_minimum_idle_time = 5
        pool.elastic_resize_factor = 0.5
        pool.commit()
        fresh = qconn.retrieve_pool(pool.uuid)
        assert (fresh.elastic_maximum_slots, fresh.elastic_minimum_idle_time,
                fresh.elastic_resize_factor) == (1, 5, 0.5)
        assert (fresh.elastic_minimum_slots, fresh.elastic_resize_period) == (0, 0)

        pool.close()
        assert wait_for(pool, POOL_FINAL, timeout=30) == "Closed"
    finally:
        _close(pool)
    pool.delete()
