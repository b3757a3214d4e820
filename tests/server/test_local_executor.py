"""LocalExecutor: a warm pool of real runner worker processes on this host."""
from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

from qcompute.server.executors import local
from qcompute.server.executors.base import Finished, InstanceSpec, Output, Phase
from qcompute.server.executors.local import LocalExecutor
from qcompute.server.sandbox import SandboxConfig
from qcompute.server.runner import ACCEPTED

from .conftest import wait_for


class Events:
    """The executor's on_event: a queue, with helpers to wait for events."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def __call__(self, event) -> None:
        self.queue.put(event)

    def next(self, timeout: float = 10.0):
        return self.queue.get(timeout=timeout)

    def until_finished(self, key, timeout: float = 15.0) -> list:
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            if event.key == key:
                seen.append(event)
                if isinstance(event, Finished):
                    return seen


def make_spec(tmp_path: Path, command: str, env: Optional[dict[str, str]] = None,
              **kw) -> InstanceSpec:
    return InstanceSpec(task_uuid=uuid.uuid4().hex, instance_id=0, attempt=1, command=command,
                        env={"INSTANCE_ID": "0", **(env or {})},
                        workdir=str(tmp_path / uuid.uuid4().hex), **kw)


@pytest.fixture
def events():
    return Events()


@pytest.fixture(params=["host", "sandbox"])
def executor(events, request):
    """Unsandboxed, and with every instance in a bubblewrap sandbox (no network)."""
    sandbox = SandboxConfig(enabled=True) if request.param == "sandbox" else None
    ex = LocalExecutor(events, capacity=2, sandbox=sandbox)
    yield ex
    ex.shutdown()


def test_events_of_a_run(executor, events, tmp_path):
    spec = make_spec(tmp_path, """sh -c 'echo "hi $INSTANCE_ID"; exit 4'""")
    executor.submit(spec)
    seen = events.until_finished(spec.key)
    assert [type(e) for e in seen] == [Phase, Output, Finished]
    assert seen[0].phase == "running" and seen[1].data == "hi 0\n"
    assert seen[-1].exit_code == 4 and seen[-1].error is None
    assert executor.running() == set()


def test_capacity_is_enforced_and_freed(executor, events, tmp_path):
    assert executor.capacity == 2
    specs = [make_spec(tmp_path, "sleep 30") for _ in range(2)]
    for spec in specs:
        executor.submit(spec)
    assert executor.running() == {s.key for s in specs}
    with pytest.raises(RuntimeError, match="capacity"):
        executor.submit(make_spec(tmp_path, "true"))
    with pytest.raises(ValueError, match="already running"):
        executor.submit(specs[1])
    executor.cancel(specs[0].key)
    events.until_finished(specs[0].key)
    executor.submit(make_spec(tmp_path, "true"))  # the slot is free once Finished arrived


def test_cancel_reports_cancelled_finished(executor, events, tmp_path):
    spec = make_spec(tmp_path, "sh -c 'echo up; sleep 30'", kill_grace_seconds=1)
    executor.submit(spec)
    assert isinstance(events.next(), Phase) and events.next().data == "up\n"
    cancelled_at = time.monotonic()
    executor.cancel(spec.key)
    finished = events.until_finished(spec.key)[-1]
    assert finished.cancelled and finished.exit_code == 128 + signal.SIGTERM
    assert time.monotonic() - cancelled_at < 1.0
    executor.cancel(spec.key)  # unknown or finished keys are ignored


def test_cancel_right_after_submit(executor, events, tmp_path):
    """The cancel may come before the worker has read the spec: it still stops it."""
    wait_for_workers(executor, 2)
    spec = make_spec(tmp_path, "sleep 30")
    executor.submit(spec)
    executor.cancel(spec.key)
    finished = events.until_finished(spec.key)[-1]
    assert finished.cancelled and finished.error is None


def test_cancel_before_a_worker_is_up(events, tmp_path):
    executor = LocalExecutor(events, capacity=1)
    spec = make_spec(tmp_path, "sleep 30")
    executor.submit(spec)  # the worker may still be starting
    executor.cancel(spec.key)
    finished = events.until_finished(spec.key)[-1]
    assert finished.cancelled and finished.error is None
    executor.shutdown()


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


ACCEPT = "echo '" + ACCEPTED + "'"


def test_runner_dying_without_report_gives_a_synthetic_finished(events, tmp_path):
    python = fake_python(tmp_path, "read spec; echo 'boom' >&2; exit 3")
    executor = LocalExecutor(events, capacity=1, python=python)
    spec = make_spec(tmp_path, "echo never")
    executor.submit(spec)
    finished = events.until_finished(spec.key)[-1]
    assert finished.exit_code is None and not finished.cancelled
    assert finished.error == "runner exited with code 3 without reporting: boom"
    executor.shutdown()


def test_a_worker_that_cannot_start_fails_the_instance_without_spinning(events, tmp_path):
    executor = LocalExecutor(events, capacity=1, python=fake_python(tmp_path, "exit 5"))
    for _ in range(3):
        spec = make_spec(tmp_path, "echo never")
        executor.submit(spec)
        finished = events.until_finished(spec.key)[-1]
        assert finished.error == "runner exited with code 5 without reporting"
    executor.shutdown()


def test_runner_ignoring_sigterm_is_killed_by_the_backstop(events, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_BACKSTOP_EXTRA_SECONDS", 0.5)
    python = fake_python(tmp_path, f"trap '' TERM; read spec; {ACCEPT}; sleep 30")
    executor = LocalExecutor(events, capacity=1, python=python)
    spec = make_spec(tmp_path, "echo never", kill_grace_seconds=0.2)
    wait_for_workers(executor, 1)
    executor.submit(spec)
    executor.cancel(spec.key)
    started = time.monotonic()
    finished = events.until_finished(spec.key, timeout=5)[-1]
    assert finished.cancelled and "code -9" in finished.error
    assert time.monotonic() - started >= 0.7  # grace + backstop: SIGTERM did not stop it
    executor.shutdown()


def test_shutdown_cancels_everything_and_refuses_new_work(events, tmp_path):
    executor = LocalExecutor(events, capacity=3)
    specs = [make_spec(tmp_path, "sleep 30", kill_grace_seconds=1) for _ in range(3)]
    for spec in specs:
        executor.submit(spec)
    pids = wait_for_workers(executor, 3)
    started = time.monotonic()
    executor.shutdown()
    assert time.monotonic() - started < 3
    finished = {}
    while not events.queue.empty():
        event = events.queue.get()
        if isinstance(event, Finished):
            finished[event.key] = event
    assert set(finished) == {s.key for s in specs}
    assert all(f.cancelled for f in finished.values())
    assert executor.running() == set() and executor.worker_pids() == []
    assert not any(pid_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(make_spec(tmp_path, "true"))


# -- the warm pool ----------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for_workers(executor: LocalExecutor, count: int) -> list[int]:
    deadline = time.monotonic() + 10
    while len(pids := executor.worker_pids()) < count:
        assert time.monotonic() < deadline, pids
        time.sleep(0.01)
    return pids


def run(executor: LocalExecutor, events: Events, tmp_path: Path, command: str, **kw) -> list:
    spec = make_spec(tmp_path, command, **kw)
    executor.submit(spec)
    return events.until_finished(spec.key)


def stdout_of(seen: list) -> str:
    return "".join(e.data for e in seen if isinstance(e, Output) and e.stream == "stdout")


def test_workers_are_started_at_construction_and_reused(events, tmp_path):
    executor = LocalExecutor(events, capacity=1)
    [pid] = wait_for_workers(executor, 1)
    parents = {stdout_of(run(executor, events, tmp_path, "sh -c 'echo $PPID'"))
               for _ in range(3)}
    assert parents == {f"{pid}\n"}  # the command's parent: the same worker every time
    assert executor.worker_pids() == [pid]
    executor.shutdown()


def test_a_worker_killed_mid_instance_is_reported_and_replaced(events, tmp_path):
    executor = LocalExecutor(events, capacity=1)
    [pid] = wait_for_workers(executor, 1)
    finished = run(executor, events, tmp_path, "sh -c 'kill -KILL $PPID; sleep 30'")[-1]
    assert finished.exit_code is None and not finished.cancelled
    assert finished.error.startswith("runner exited with code -9 without reporting")
    seen = run(executor, events, tmp_path, "sh -c 'echo $PPID'")
    assert seen[-1].exit_code == 0 and seen[-1].error is None
    [new_pid] = executor.worker_pids()
    assert new_pid != pid and stdout_of(seen) == f"{new_pid}\n"
    executor.shutdown()


def test_an_idle_worker_that_dies_is_replaced(events, tmp_path):
    executor = LocalExecutor(events, capacity=1)
    run(executor, events, tmp_path, "true")  # it served: replaced at once when it dies
    [pid] = executor.worker_pids()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while executor.worker_pids() in ([pid], []):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert run(executor, events, tmp_path, "echo ok")[-1].exit_code == 0
    executor.shutdown()


def test_nothing_leaks_from_one_instance_to_the_next(events, tmp_path):
    executor = LocalExecutor(events, capacity=1)
    first = make_spec(tmp_path, """sh -c 'echo "$SECRET"; cd /; export LEAK=1; sleep 30 &'""",
                      env={"SECRET": "s3cr3t"})
    executor.submit(first)
    assert stdout_of(events.until_finished(first.key)) == "s3cr3t\n"
    seen = run(executor, events, tmp_path, """sh -c 'echo "[$SECRET$LEAK]"; pwd'""")
    second_workdir = Path(stdout_of(seen).splitlines()[1])
    assert stdout_of(seen).splitlines()[0] == "[]"
    assert second_workdir.parent.parent == tmp_path and second_workdir.name == "job"
    assert not Path(first.workdir).exists()
    executor.shutdown()


def test_sigterm_to_an_idle_worker_is_ignored(executor, events, tmp_path):
    run(executor, events, tmp_path, "true")
    executor.cancel(make_spec(tmp_path, "true").key)  # an unknown key: nothing happens
    pids = wait_for_workers(executor, 2)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.2)  # a cancel left pending must not reach the next instance either
    for _ in range(2):
        finished = run(executor, events, tmp_path, "sh -c 'sleep 0.1; echo done'")
        assert stdout_of(finished) == "done\n"
        assert finished[-1].exit_code == 0 and not finished[-1].cancelled
    assert sorted(executor.worker_pids()) == sorted(pids)


def test_cancel_crossing_finished_does_not_reach_the_next_instance(events, tmp_path):
    """A cancel sent while the worker reports Finished stays pending in the idle worker: it is
    discarded before the next instance starts."""
    executor = LocalExecutor(events, capacity=1)
    for _ in range(5):
        spec = make_spec(tmp_path, "true")
        executor.submit(spec)
        events.until_finished(spec.key)
        for pid in executor.worker_pids():
            os.kill(pid, signal.SIGTERM)  # as a cancel racing the Finished would
        seen = run(executor, events, tmp_path, "sh -c 'sleep 0.2; echo ok'")
        assert seen[-1].exit_code == 0 and not seen[-1].cancelled
    executor.shutdown()


def test_workers_are_recycled(events, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_MAX_INSTANCES_PER_WORKER", 2)
    executor = LocalExecutor(events, capacity=1)
    parents = [stdout_of(run(executor, events, tmp_path, "sh -c 'echo $PPID'"))
               for _ in range(4)]
    assert parents[0] == parents[1] != parents[2] == parents[3]
    executor.shutdown()


def _wait_for_worker(executor: LocalExecutor) -> int:
    deadline = time.monotonic() + 10
    while not executor.worker_pids():
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.02)
    return executor.worker_pids()[0]


def test_a_stalled_worker_is_killed_and_its_instance_fails_as_infrastructure(events, tmp_path):
    """A worker that stops (SIGSTOP: no heartbeat) while it runs an instance is killed after
    ``stall_seconds``; the instance ends as an infrastructure failure that says why."""
    ex = LocalExecutor(events, capacity=1, stall_seconds=2.0)
    try:
        spec = make_spec(tmp_path, "sleep 30")
        ex.submit(spec)
        assert isinstance(events.next(), Phase)  # running
        worker = _wait_for_worker(ex)
        os.kill(worker, signal.SIGSTOP)
        finished = events.until_finished(spec.key, timeout=20)[-1]
        assert finished.exit_code is None and "stalled" in finished.error
        follow = make_spec(tmp_path, "true")  # the slot has a fresh worker
        ex.submit(follow)
        assert events.until_finished(follow.key)[-1].exit_code == 0
    finally:
        ex.shutdown()


def test_a_busy_heartbeat_keeps_a_long_quiet_instance_alive(events, tmp_path):
    ex = LocalExecutor(events, capacity=1, stall_seconds=1.0)
    try:
        spec = make_spec(tmp_path, "sleep 3")  # three times the stall bound, without output
        ex.submit(spec)
        finished = events.until_finished(spec.key)[-1]
        assert finished.exit_code == 0 and finished.error is None
    finally:
        ex.shutdown()


def test_submit_never_blocks_on_a_worker_that_does_not_read(events, tmp_path):
    """A spec bigger than a pipe buffer, for a stopped worker: submit returns at once (the
    slot's thread writes it), and the other slot keeps serving."""
    ex = LocalExecutor(events, capacity=2, stall_seconds=2.0)
    try:
        deadline = time.monotonic() + 10
        while len(ex.worker_pids()) < 2:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.02)
        stopped = ex.worker_pids()
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        big = make_spec(tmp_path, "true", env={"BIG": "x" * (4 << 20)})
        ex.submit(big)  # before: a blocking write under the executor's lock, for ever
        for pid in stopped:
            if pid != _worker_of(ex, big.key):
                os.kill(pid, signal.SIGCONT)
        small = make_spec(tmp_path, "echo small")
        ex.submit(small)
        assert events.until_finished(small.key)[-1].exit_code == 0
        finished = events.until_finished(big.key, timeout=20)[-1]
        assert "stalled" in finished.error
    finally:
        ex.shutdown()


def _worker_of(ex: LocalExecutor, key) -> int:
    slot = next(s for s in ex._slots if s.run is not None and s.run.spec.key == key)
    return slot.proc.pid


class HeldEnds(Events):
    """An on_event that holds each Finished until released, as the scheduler does while it
    writes the output held back for masking."""

    def __init__(self) -> None:
        super().__init__()
        self.handing, self.release = threading.Event(), threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, Finished):
            self.handing.set()
            self.release.wait(15)
        super().__call__(event)


@pytest.mark.parametrize("worker", [None, "read spec; exit 3"], ids=["ended", "worker died"])
def test_a_key_stays_running_until_its_finished_is_handed_over(tmp_path, worker):
    """The scheduler settles a key missing from running() as lost: the key stays while its
    Finished is on its way. Before: the slot let go of it first, and a slow hand-over earned
    a finished instance strikes (and, after three, a synthesised loss)."""
    events = HeldEnds()
    ex = LocalExecutor(events, capacity=1,
                       python=fake_python(tmp_path, worker) if worker else sys.executable)
    try:
        spec = make_spec(tmp_path, "true")
        ex.submit(spec)
        assert events.handing.wait(15)
        assert ex.running() == {spec.key}  # the slot is free, its end not handed over yet
        events.release.set()
        assert isinstance(events.until_finished(spec.key)[-1], Finished)
        wait_for(lambda: ex.running() == set())
    finally:
        events.release.set()
        ex.shutdown()
