"""LocalExecutor: real runner processes on this host."""
from __future__ import annotations

import queue
import signal
import time
import uuid
from pathlib import Path

import pytest

from qcompute.server.executors import local
from qcompute.server.executors.base import Finished, InstanceSpec, Output, Phase
from qcompute.server.executors.local import LocalExecutor


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


def make_spec(tmp_path: Path, command: str, **kw) -> InstanceSpec:
    return InstanceSpec(task_uuid=uuid.uuid4().hex, instance_id=0, attempt=1, command=command,
                        env={"INSTANCE_ID": "0"}, workdir=str(tmp_path / uuid.uuid4().hex), **kw)


@pytest.fixture
def events():
    return Events()


@pytest.fixture
def executor(events):
    ex = LocalExecutor(events, capacity=2)
    yield ex
    ex.shutdown()


def test_events_of_a_run(executor, events, tmp_path):
    spec = make_spec(tmp_path, 'echo "hi $INSTANCE_ID"; exit 4')
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
    spec = make_spec(tmp_path, "echo up; sleep 30", kill_grace_seconds=1)
    executor.submit(spec)
    assert isinstance(events.next(), Phase) and events.next().data == "up\n"
    cancelled_at = time.monotonic()
    executor.cancel(spec.key)
    finished = events.until_finished(spec.key)[-1]
    assert finished.cancelled and finished.exit_code == -signal.SIGTERM
    assert time.monotonic() - cancelled_at < 1.0
    executor.cancel(spec.key)  # unknown or finished keys are ignored


def test_cancel_right_after_submit(executor, events, tmp_path):
    """SIGTERM may reach the runner while Python starts: it still reports."""
    spec = make_spec(tmp_path, "sleep 30")
    executor.submit(spec)
    executor.cancel(spec.key)
    finished = events.until_finished(spec.key)[-1]
    assert finished.cancelled and finished.error is None


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


def test_runner_dying_without_report_gives_a_synthetic_finished(events, tmp_path):
    python = fake_python(tmp_path, "cat > /dev/null; echo 'boom' >&2; exit 3")
    executor = LocalExecutor(events, capacity=1, python=python)
    spec = make_spec(tmp_path, "echo never")
    executor.submit(spec)
    finished = events.until_finished(spec.key)[-1]
    assert finished.exit_code is None and not finished.cancelled
    assert finished.error == "runner exited with code 3 without reporting: boom"
    executor.shutdown()


def test_runner_ignoring_sigterm_is_killed_by_the_backstop(events, tmp_path, monkeypatch):
    monkeypatch.setattr(local, "_BACKSTOP_EXTRA_SECONDS", 0.5)
    python = fake_python(tmp_path, "trap '' TERM; cat > /dev/null; sleep 30")
    executor = LocalExecutor(events, capacity=1, python=python)
    spec = make_spec(tmp_path, "echo never", kill_grace_seconds=0.2)
    executor.submit(spec)
    time.sleep(0.2)  # let the fake runner install its trap
    executor.cancel(spec.key)
    finished = events.until_finished(spec.key, timeout=5)[-1]
    assert finished.cancelled and "code -9" in finished.error
    executor.shutdown()


def test_shutdown_cancels_everything_and_refuses_new_work(events, tmp_path):
    executor = LocalExecutor(events, capacity=3)
    specs = [make_spec(tmp_path, "sleep 30", kill_grace_seconds=1) for _ in range(3)]
    for spec in specs:
        executor.submit(spec)
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
    assert executor.running() == set()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(make_spec(tmp_path, "true"))
