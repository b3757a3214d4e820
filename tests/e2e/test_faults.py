"""Faults injected into a real cluster of its own: every task ends final with a reason, no
process outlives what it belonged to, and every result file is intact.

Storage faults (SeaweedFS killed mid-transfer) are in ``test_faults_storage.py``, an instance's
own faults (its command killed, a full disk) in ``test_faults_runner.py``."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from qcompute import TaskState
from qcompute.server.bootstrap import read_token

from .conftest import ClusterProcess, host_pids_with, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _marker(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _fresh(task):
    """The task as the server has it now. (``update`` returns whether it sent a request, not a
    state: ``task.update(...) or <condition>`` ends a wait at its first request.)"""
    task.update(flushcache=True)
    return task


def _gone(pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"{len(alive)} of {len(pids)} processes outlived the server by " \
        f"{timeout} s: " + "; ".join(_described(p) for p in alive[:10])


def _described(pid: int) -> str:
    """A process as ``ps`` would show it: pid, state, parent and command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {stat[0]} ppid {stat[1]}: {line}"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """Two slots, fault injection on, and a runner silent for 3 s counts as stalled."""
    running = ClusterProcess(tmp_path_factory.mktemp("faulty"), workers=2, env={
        "QCOMPUTE_SERVER_FAULT_INJECTION": "true", "QCOMPUTE_SERVER_RUNNER_STALL_SECONDS": "3"})
    running.start()
    yield running
    running.stop()


def _inject(cluster: ClusterProcess, rounds: int) -> None:
    response = requests.post(f"{cluster.url}/admin/faults", json={"schedulerRounds": rounds},
                             headers={"Authorization": read_token(cluster.config)}, timeout=10)
    response.raise_for_status()


def test_sigkill_of_the_server_with_100_instances_running(tmp_path):
    """100 instances run; the server is SIGKILLed: the sandboxes die with it, and after a
    restart every instance runs again and uploads its result."""
    running = ClusterProcess(tmp_path / "crash", workers=100)
    running.start()
    try:
        conn = running.connection()
        bucket = conn.create_bucket(f"crash-{time.monotonic_ns()}")
        marker = _marker("crash")
        task = conn.create_task("hundred", "docker-batch", 100)
        # Long enough for all 100 to be running at once, even on a loaded machine (all 100
        # ran 4 to 14 s after the submit at load averages of 27 to 46).
        task.constants["DOCKER_CMD"] = ("sh -c 'sleep 30; echo result of $INSTANCE_ID > "
                                        f"out-$INSTANCE_ID.txt' {marker}")
        task.results = bucket
        task.submit()
        _wait(lambda: _fresh(task).running_core_count == 100, 120, "100 instances to run")
        pids = host_pids_with(marker)  # each instance's sandbox and command
        running.kill()
        _gone(pids)  # nothing of the first run outlived the server
        running.start()
        conn = running.connection()
        task = conn.retrieve_task(task.uuid)
        assert task.wait(timeout=150), task.state
        assert task.state == TaskState.SUCCESS, task.errors
        assert {i.execution_attempt_count for i in task.completed_instances} == {2}
        out = tmp_path / "results"
        task.download_results(str(out))
        files = sorted(out.iterdir())
        assert len(files) == 100
        assert all(f.read_text() == f"result of {f.stem.split('-')[1]}\n" for f in files)
        assert host_pids_with(marker) == []
    finally:
        running.stop()


def test_an_exception_in_a_scheduler_round_strands_no_task(faulty):
    conn = faulty.connection()
    tasks = []
    for n in range(3):
        task = conn.create_task(f"round-{n}", "docker-batch")
        task.constants["DOCKER_CMD"] = f"echo ran {n}"
        tasks.append(task)
    _inject(faulty, 1)  # the round that applies one of these tasks' events fails
    for task in tasks:
        task.submit()
    for n, task in enumerate(tasks):
        assert task.wait(timeout=30), task.state
        assert task.state == TaskState.SUCCESS, task.errors
        assert task.stdout() == f"ran {n}\n"
    requests_left = requests.post(f"{faulty.url}/admin/faults", json={},
                                  headers={"Authorization": read_token(faulty.config)}, timeout=10)
    assert requests_left.json() == {"schedulerRounds": 0}


def test_rounds_that_keep_failing_still_end_the_task_with_the_reason(faulty):
    conn = faulty.connection()
    task = conn.create_task("doomed round", "docker-batch")
    task.constants["DOCKER_CMD"] = "sleep 5"
    task.submit()
    _wait(lambda: _fresh(task).state == TaskState.FULLY_EXECUTING, 20, "running")
    _inject(faulty, 1_000)  # every round fails, each event alone too
    try:
        assert task.wait(timeout=30), task.state
    finally:
        _inject(faulty, 0)
    assert task.state == TaskState.FAILURE
    assert "could not record this instance's end" in task.errors[0].message


def _runner_of(pid: int) -> int:
    """The runner worker above a process of an instance."""
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"qcompute.server.runner" in cmdline:
            return pid
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    raise AssertionError("no runner worker above the instance")


def test_a_runner_that_hangs_is_ended_and_its_instance_retried(faulty):
    conn = faulty.connection()
    marker = _marker("hang")
    task = conn.create_task("hung runner", "docker-batch")
    task.constants["DOCKER_CMD"] = f"sh -c 'sleep 4; echo done' {marker}"
    task.submit()
    pids = _wait(lambda: host_pids_with(marker), 20, "the instance to run")  # sandbox, command
    worker = _runner_of(pids[0])
    os.kill(worker, signal.SIGSTOP)  # wedged: no heartbeat, no events
    _gone([worker, *pids], timeout=20)  # killed by the watchdog, its sandbox with it
    assert task.wait(timeout=40), task.state
    assert task.state == TaskState.SUCCESS, task.errors
    [instance] = task.completed_instances
    assert instance.execution_attempt_count == 2
    assert task.stdout().endswith("done\n")
