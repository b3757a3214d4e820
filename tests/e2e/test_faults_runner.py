"""Faults of an instance on the real cluster: its command SIGKILLed from outside, result files
whose names S3 cannot store. Each task ends final with a reason, and nothing of it is left."""
from __future__ import annotations

import os
import signal
import time

import pytest

from qcompute import RetrySettings, TaskState

from .conftest import host_pids_with, pid_alive


def kill_when_running(marker: str, timeout: float = 30.0) -> int:
    """SIGKILL the process of this host with ``marker`` in its command line, once it runs; its
    host pid."""
    deadline = time.monotonic() + timeout
    while not (pids := host_pids_with(marker)):
        assert time.monotonic() < deadline, f"no process with {marker} started"
        time.sleep(0.05)
    assert len(pids) == 1, pids
    # the user's process, inside its sandbox (a PID namespace of its own)
    assert os.readlink(f"/proc/{pids[0]}/ns/pid") != os.readlink("/proc/self/ns/pid")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


@pytest.mark.timeout(120)
def test_a_sigkilled_command_fails_with_137_after_its_retries(conn):
    marker = f"600.{time.monotonic_ns() % 10**9}"  # a sleep only this test starts
    task = conn.create_task("killed", "docker-batch")
    task.constants["DOCKER_CMD"] = f"sh -c 'echo started; exec sleep {marker}'"
    task.retry_settings = RetrySettings(max_per_instance_retries=1)
    task.submit()
    killed = [kill_when_running(marker)]  # the attempt; once it is gone (a SIGKILL is not
    assert gone(killed[0])  # instant: looking at once could find it again), its retry
    killed.append(kill_when_running(marker))
    assert task.wait(timeout=60)
    assert task.state == TaskState.FAILURE
    [instance] = task.completed_instances
    assert (instance.exit_code, instance.execution_attempt_count) == (137, 2)
    assert instance.error.message == "attempt 2 exited with code 137 (retries used up)"
    assert task.stdout() == "started\nstarted\n"
    assert all(gone(pid) for pid in killed) and host_pids_with(marker) == []


@pytest.mark.timeout(120)
def test_a_sigkilled_command_is_retried_and_the_retry_succeeds(conn):
    marker = f"600.{time.monotonic_ns() % 10**9}"
    state = conn.create_bucket(f"e2e-killed-{time.monotonic_ns()}")
    task = conn.create_task("killed-once", "docker-batch")
    task.resources, task.results = [state], state
    # the killed attempt's results are uploaded too: its marker file tells the retry
    task.constants["DOCKER_CMD"] = (f"sh -c 'if [ -f killed-once ]; then echo second try; "
                                    f"else touch killed-once; exec sleep {marker}; fi'")
    task.retry_settings = RetrySettings(max_per_instance_retries=2)
    task.submit()
    killed = kill_when_running(marker)
    assert task.wait(timeout=60)
    assert task.state == TaskState.SUCCESS, task.errors
    [instance] = task.completed_instances
    assert (instance.exit_code, instance.execution_attempt_count) == (0, 2)
    assert task.stdout() == "second try\n"
    assert gone(killed)
    state.delete()


@pytest.mark.timeout(120)
def test_result_names_s3_cannot_store_end_the_task_with_them_named(conn):
    bucket = conn.create_bucket(f"e2e-names-{time.monotonic_ns()}")
    task = conn.create_task("bad-names", "docker-batch")
    task.results = bucket
    task.constants["DOCKER_CMD"] = (
        "python3 -c \"open(b'bad\\xff.txt', 'w').write('x'); open('fine.txt', 'w').write('ok')\"")
    task.submit()
    assert task.wait(timeout=90)
    assert task.state == TaskState.FAILURE
    [instance] = task.completed_instances
    assert instance.exit_code == 0
    assert instance.error.message == ("1 result file cannot be stored in S3: "
                                      "b'bad\\xff.txt' (the name is not valid UTF-8)")
    assert any("bad\\xff.txt" in error.message for error in task.errors)
    assert [info.key for info in bucket.list_files()] == ["fine.txt"]  # the rest is uploaded
    bucket.delete()
