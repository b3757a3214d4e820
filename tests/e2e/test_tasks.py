"""Real tasks through the embedded cluster, driven by the SDK as a user would."""
from __future__ import annotations

import time

import pytest

import qcompute
from qcompute import TaskState

from .conftest import host_pids_with, pid_alive


def test_hello_world(conn):
    task = conn.create_task("hello world", "docker-batch")
    task.constants["DOCKER_CMD"] = "echo hello world from ${INSTANCE_ID}!"
    task.run()
    assert task.state == TaskState.SUCCESS
    assert task.stdout() == "hello world from 0!\n"
    assert task.completed_instances[0].exit_code == 0


def test_files_in_and_out(conn, tmp_path):
    resources = conn.create_bucket("e2e-files-in")
    resources.add_string("hello files\n", "input/lorem.txt")
    resources.add_string("not for this task\n", "other/skip.txt")
    results = conn.create_bucket("e2e-files-out")
    task = conn.create_task("files", "docker-batch")
    task.resources = [resources.with_filtering("input/").with_resource_transformation("input/")]
    task.results = results
    task.constants["DOCKER_CMD"] = (
        "sh -c 'ls; tr a-z A-Z < lorem.txt > LOREM.txt; echo scratch > scratch.tmp'")
    task.results_blacklist = r"\.tmp$"
    task.run(output_dir=str(tmp_path / "out"))
    assert task.state == TaskState.SUCCESS, task.errors
    assert task.stdout().split() == ["lorem.txt"]  # filtered and stripped
    assert (tmp_path / "out" / "LOREM.txt").read_text() == "HELLO FILES\n"
    assert not (tmp_path / "out" / "scratch.tmp").exists()
    assert sorted(results.list_files()) == ["LOREM.txt"]


def test_three_instances(conn):
    task = conn.create_task("three", "docker-batch", 3)
    task.constants["DOCKER_CMD"] = "echo instance ${INSTANCE_ID} of ${INSTANCE_COUNT} ${QRANK}/${QSIZE}"
    task.run()
    assert task.state == TaskState.SUCCESS
    lines = sorted(task.stdout().splitlines())
    assert lines == [f"instance {i} of 3 {i}/3" for i in range(3)]
    assert task.stdout(instance_id=2) == "instance 2 of 3 2/3\n"
    assert task.status.succeeded_range == "0-2"


def test_advanced_range(conn):
    task = conn.create_task("range", "docker-batch", "115-117,200")
    task.constants["DOCKER_CMD"] = "echo frame ${FRAME_ID}"
    task.run()
    assert task.state == TaskState.SUCCESS
    assert sorted(task.stdout().splitlines()) == [f"frame {i}" for i in (115, 116, 117, 200)]
    assert sorted(c.instance_id for c in task.completed_instances) == [115, 116, 117, 200]


def test_failing_command(conn):
    task = conn.create_task("fails", "docker-batch")
    task.constants["DOCKER_CMD"] = "sh -c 'echo oops >&2; exit 7'"
    task.run()
    assert task.state == TaskState.FAILURE
    assert task.completed_instances[0].exit_code == 7
    assert "exited with code 7" in task.errors[0].message
    assert task.stderr() == "oops\n"


def test_abort_kills_the_running_command(conn):
    marker = f"300.{time.monotonic_ns() % 10**6}"  # a sleep only this test starts
    task = conn.create_task("sleeper", "docker-batch")
    task.constants["DOCKER_CMD"] = (f"sh -c '(setsid sleep {marker} &); sleep {marker} & "
                                    "echo started; wait'")
    task.submit()
    deadline = time.monotonic() + 20
    while "started" not in task.fresh_stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = host_pids_with(marker)
    assert len(pids) == 2
    task.abort()
    assert task.wait(timeout=30)
    assert task.state == TaskState.CANCELLED
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "the command's process tree survived abort"


def test_fresh_stdout_streams_while_running(conn):
    task = conn.create_task("stream", "docker-batch")
    task.constants["DOCKER_CMD"] = "sh -c 'echo first; sleep 3; echo second'"
    task.submit()
    seen, deadline = "", time.monotonic() + 20
    while "first" not in seen and time.monotonic() < deadline:
        seen += task.fresh_stdout()
        time.sleep(0.05)
    assert "first" in seen
    task.update(flushcache=True)
    assert not task.state.is_final(), "the line must arrive while the task still runs"
    assert task.wait(timeout=30)
    assert task.fresh_stdout() == "second\n"


def test_unknown_profile_is_a_clear_error(conn):
    task = conn.create_task("bad", "no-such-profile")
    task.constants["DOCKER_CMD"] = "true"
    with pytest.raises(qcompute.exceptions.BadRequestError, match="no-such-profile"):
        task.submit()


def test_bad_token_is_a_clear_error(cluster):
    bad = qcompute.Connection(cluster_url=cluster.url, client_token="not-a-token")
    with pytest.raises(qcompute.exceptions.UnauthorizedException, match="invalid token"):
        bad.retrieve_task("00000000-0000-0000-0000-000000000000")


def test_tags_paging_and_bulk_submit(conn):
    tag = f"bulk-{time.monotonic_ns()}"
    tasks = []
    for i in range(3):
        task = conn.create_task(f"bulk {i}", "docker-batch")
        task.constants["DOCKER_CMD"] = "true"
        task.tags = [tag]
        tasks.append(task)
    conn.submit_tasks(tasks)
    assert all(t.uuid for t in tasks)
    listed = conn.tasks(tags=[tag])
    assert sorted(t.uuid for t in listed) == sorted(t.uuid for t in tasks)
    for task in tasks:
        assert task.wait(timeout=30) and task.state == TaskState.SUCCESS
        task.delete()
    assert conn.tasks(tags=[tag]) == []


def test_wait_tasks_any_then_all(conn):
    fast = conn.create_task("fast", "docker-batch")
    fast.constants["DOCKER_CMD"] = "true"
    slow = conn.create_task("slow", "docker-batch")
    slow.constants["DOCKER_CMD"] = "sleep 3"
    conn.submit_tasks([slow, fast])
    assert conn.wait_tasks([slow, fast], timeout=30, return_when=qcompute.ANY)
    assert fast.state == TaskState.SUCCESS
    assert not slow.state.is_final(), "ANY must return before the slow task ends"
    assert conn.wait_tasks([slow, fast], timeout=30, return_when=qcompute.ALL)
    assert slow.state == TaskState.SUCCESS


def test_a_bulk_retried_after_a_client_timeout_creates_each_task_once(conn, cluster, caplog):
    """The issue's case: 1,500 tasks, the client times out and retries with the same key while
    the first attempt still runs. The retry waits for it and gets its answer: 1,500 tasks. (They
    wait on a parent that sleeps, in a job terminated at the end: none of them runs.)"""
    job = conn.create_job("bulk-retry", use_dependencies=True).submit()
    parent = conn.create_task("parent", "docker-batch", job=job)
    parent.constants["DOCKER_CMD"] = "sleep 120"
    parent.submit()
    try:
        with cluster.connection(cluster_timeout=0.5, retry_count=10, retry_wait=0.25) as hasty:
            tasks = []
            for i in range(1500):
                task = hasty.create_task(f"bulk {i}", "docker-batch", job=job.uuid)
                task.constants["DOCKER_CMD"] = "true"
                task.set_task_dependencies_from_tasks([parent])
                tasks.append(task)
            with caplog.at_level("DEBUG", logger="qcompute._http"):
                hasty.submit_tasks(tasks)
        assert any("retrying POST" in r.getMessage() and "/tasks" in r.getMessage()
                   for r in caplog.records)  # the first attempt timed out
        uuids = {t.uuid for t in tasks}
        assert len(uuids) == 1500
        listed = {t["uuid"] for t in conn._http.get(f"/jobs/{job.uuid}/tasks")}
        assert listed == uuids | {parent.uuid}
    finally:
        job.terminate()
