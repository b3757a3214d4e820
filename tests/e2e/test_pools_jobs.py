"""Pools, jobs with dependencies and retries on the real cluster, driven by the SDK."""
from __future__ import annotations

import time

from qcompute import PoolState, TaskState
from qcompute.dependencies import AdvancedDependency
from qcompute.options import RetrySettings


def test_a_pool_prepares_its_slot_then_runs_tasks_inside(conn):
    pool = conn.create_pool("e2e-pool", "docker-batch", 1)
    pool.constants["GREETING"] = "hello from the pool"
    pool.preparation_task = "sh -c 'echo preparing slot $SLOT_ID; echo ready > /share/prepared'"
    pool.submit()
    assert pool.wait(PoolState.FULLY_EXECUTING, timeout=60)
    assert "preparing slot 0" in pool.stdout()
    task = conn.create_task("in-pool", pool, 2)
    task.constants["DOCKER_CMD"] = ("sh -c 'test -f /share/prepared && "
                                    "echo \"$GREETING $INSTANCE_ID\"'")
    task.run(job_timeout=60)
    assert task.state == TaskState.SUCCESS
    assert sorted(task.stdout().splitlines()) == ["hello from the pool 0",
                                                  "hello from the pool 1"]
    pool.close()
    assert pool.wait(PoolState.CLOSED, timeout=30)
    assert pool.total_slot_capacity == 0


def test_closing_a_pool_cancels_its_running_and_queued_tasks(conn):
    pool = conn.create_pool("e2e-close", "docker-batch", 1).submit()
    assert pool.wait(PoolState.FULLY_EXECUTING, timeout=60)
    running = conn.create_task("long", pool, 1)
    running.constants["DOCKER_CMD"] = "sleep 30"
    running.submit()
    queued = conn.create_task("waiting", pool, 1)  # the pool's one slot is taken
    queued.constants["DOCKER_CMD"] = "sleep 30"
    queued.submit()
    deadline = time.monotonic() + 30
    while running.state != TaskState.FULLY_EXECUTING and time.monotonic() < deadline:
        time.sleep(0.1)
        running.update(flushcache=True)
    assert running.state == TaskState.FULLY_EXECUTING
    started = time.monotonic()
    pool.close()
    assert pool.wait(PoolState.CLOSED, timeout=20)
    assert time.monotonic() - started < 10, "close must stop the task, not wait for it"
    assert pool.total_slot_capacity == 0
    for task in (running, queued):
        task.update(flushcache=True)
        assert task.state == TaskState.CANCELLED
        assert [(e.code, e.message) for e in task.errors] == [
            ("pool_closed", f"pool {pool.uuid} was closed before the task ended")]


def test_a_job_pipeline_runs_its_dag_and_cancels_the_unreachable_branch(conn):
    job = conn.create_job("e2e-dag", use_dependencies=True).submit()

    def task(name: str, command: str):
        t = conn.create_task(name, "docker-batch", job=job)
        t.constants["DOCKER_CMD"] = command
        return t

    prepare = task("prepare", "echo prepared").submit()
    flaky = task("flaky", "sh -c 'exit 4'")
    flaky.set_task_dependencies_from_tasks([prepare])
    flaky.submit()
    on_success = task("on-success", "echo never")
    on_success.set_task_dependencies_from_tasks([flaky])
    on_success.submit()
    on_failure = task("on-failure", "echo cleaning up")
    on_failure.set_task_advanced_dependencies(
        [AdvancedDependency(flaky.uuid, ["failure", "cancelled"])])
    on_failure.submit()
    assert conn.wait_tasks([prepare, flaky, on_success, on_failure], timeout=60)
    assert [t.state for t in (prepare, flaky, on_success, on_failure)] == [
        TaskState.SUCCESS, TaskState.FAILURE, TaskState.CANCELLED, TaskState.SUCCESS]
    assert flaky.uuid in on_success.errors[0].message
    assert on_failure.stdout() == "cleaning up\n"
    assert {t.uuid for t in job.tasks()} == {prepare.uuid, flaky.uuid, on_success.uuid,
                                           on_failure.uuid}
    job.terminate()
    assert job.wait(timeout=30)


def test_a_failed_instance_is_retried_and_the_attempts_show(conn):
    # the first attempt leaves a marker in the bucket it reads: the retry finds it
    state = conn.create_bucket(f"e2e-retry-{time.monotonic_ns()}")
    task = conn.create_task("retry", "docker-batch", 1)
    task.resources, task.results = [state], state
    task.constants["DOCKER_CMD"] = ("sh -c 'if [ -f failed-once ]; then echo second try; "
                                    "else touch failed-once; exit 1; fi'")
    task.retry_settings = RetrySettings(max_per_instance_retries=2)
    task.run(job_timeout=60)
    assert task.state == TaskState.SUCCESS
    assert task.completed_instances[0].execution_attempt_count == 2
    state.delete()
