"""The scheduler never loses an event: failed rounds, events that fail alone, instances the
executor lost or runs unknowingly, output that cannot be written, and working dirs."""
from __future__ import annotations

import errno
import logging
import threading
import time
from types import SimpleNamespace

import pytest

from qcompute.server.executors.base import Finished, InstanceKey, InstanceSpec
from qcompute.server.scheduler_recovery import STRIKES, Recovery

from .conftest import serving, wait_for


@pytest.fixture
def quick(tmp_path, database_url):
    """A 0.05 s tick, so the recovery checks come fast; fault injection on."""
    with serving(tmp_path / "quick", scheduler_tick_seconds=0.05,
                 fault_injection=True) as running:
        yield running


def _scheduler(cluster):
    return cluster.client.app.state.ctx.scheduler


def test_a_failed_round_is_applied_again_and_its_task_ends(quick):
    """Before: the round's Finished was dropped and the task stayed FullyExecuting."""
    uuid = quick.submit()
    [key] = quick.wait_dispatched(uuid, 1)
    assert quick.post("/admin/faults", json={"schedulerRounds": 1}).status_code == 200
    quick.executor.run(key, exit_code=0, stdout="done\n")
    task = quick.wait_state(uuid, "Success")
    assert task["completedInstances"][0]["state"] == "Success"
    assert _scheduler(quick).injected_faults == 0


def test_an_end_that_fails_even_alone_is_recorded_as_a_failure_with_the_reason(quick):
    uuid = quick.submit()
    [key] = quick.wait_dispatched(uuid, 1)
    _scheduler(quick).injected_faults = 10_000  # every round fails, one by one too
    try:
        quick.executor.run(key, exit_code=0)
        task = quick.wait_state(uuid, "Failure")
    finally:
        _scheduler(quick).injected_faults = 0
    [instance] = task["completedInstances"]
    assert "could not record this instance's end" in instance["error"]
    assert instance["endedAt"] is not None
    assert "could not record" in task["errors"][0]["message"]


def test_an_instance_the_executor_lost_is_settled_and_requeued(quick):
    uuid = quick.submit()
    [key] = quick.wait_dispatched(uuid, 1)
    quick.executor.specs.pop(key)  # the executor forgets it without a Finished
    again = InstanceKey(key.task_uuid, key.instance_id, key.attempt + 1)
    wait_for(lambda: again in quick.executor.specs, timeout=10)
    quick.executor.run(again, exit_code=0)
    task = quick.wait_state(uuid, "Success")
    assert task["completedInstances"][0]["state"] == "Success"


def test_an_instance_nothing_believes_in_is_cancelled(quick):
    ghost = InstanceKey("0" * 32, 0, 1)
    quick.executor.specs[ghost] = InstanceSpec(task_uuid=ghost.task_uuid, instance_id=0,
                                               attempt=1, command="true", env={}, workdir="/x")
    wait_for(lambda: ghost in quick.executor.cancelled, timeout=10)


def test_a_lost_key_needs_strikes_in_a_row():
    """A Finished on its way (queued, not applied yet) is not mistaken for a loss: only STRIKES
    checks in a row settle a key, and a key that comes back resets."""
    key, back = InstanceKey("t", 0, 1), InstanceKey("t", 1, 1)
    queued: list = []
    scheduler = SimpleNamespace(_in_flight={key, back}, _events=SimpleNamespace(put=queued.append),
                                executor=SimpleNamespace(running=set, cancel=None))
    session = SimpleNamespace(execute=lambda _query: [])
    recovery = Recovery(scheduler)
    for _ in range(STRIKES - 1):
        recovery.check(session)
    scheduler.executor.running = lambda: {back}
    recovery.check(session)
    assert [(type(e), e.key) for e in queued] == [(Finished, key)]
    assert "lost" in queued[0].error


def test_ticks_piled_up_behind_a_slow_round_do_not_strike_an_instance_that_ended(
        quick, monkeypatch, caplog):
    """A slow round lets ticks pile up, and an instance's end queues behind them. The check runs
    once a round, after all its events: the end is applied before it looks. Before: every tick
    of the batch counted a strike, and the instance was "settled as lost" (logged, and a
    synthesised end queued behind the real one)."""
    scheduler = _scheduler(quick)
    uuid = quick.submit()
    [key] = quick.wait_dispatched(uuid, 1)
    held, release = threading.Event(), threading.Event()
    run_timers = scheduler.timers.run

    def slow_round(session, touched):
        held.set()
        release.wait(10)
        run_timers(session, touched)

    monkeypatch.setattr(scheduler.timers, "run", slow_round)
    assert held.wait(5)
    monkeypatch.setattr(scheduler.timers, "run", run_timers)  # the next rounds are quick
    time.sleep(20 * 0.05)  # about 20 ticks queue up behind the held round
    quick.executor.run(key, exit_code=0)  # its end queues behind them
    with caplog.at_level(logging.WARNING, logger="qcompute.server.scheduler_recovery"):
        release.set()
        task = quick.wait_state(uuid, "Success")
    assert not [r for r in caplog.records if "settling it as lost" in r.getMessage()]
    assert task["completedInstances"][0]["executionAttemptCount"] == 1


def test_an_unstorable_error_is_stored(cluster):
    uuid = cluster.submit()
    [key] = cluster.wait_dispatched(uuid, 1)
    cluster.executor.specs.pop(key)
    nasty = "cannot upload r\udcffsult\x00.txt " + "x" * 10_000
    cluster.executor.on_event(Finished(key, exit_code=None, error=nasty))
    wait_for(lambda: len(cluster.executor.keys_of(uuid)) == 1, timeout=10)  # re-queued
    [again] = cluster.executor.keys_of(uuid)
    cluster.executor.run(again, exit_code=0)
    cluster.wait_state(uuid, "Success")


def test_output_that_cannot_be_written_never_drops_the_end(cluster, monkeypatch):
    uuid = cluster.submit()
    [key] = cluster.wait_dispatched(uuid, 1)
    outputs = cluster.client.app.state.ctx.outputs

    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs, "append", full)
    cluster.executor.run(key, exit_code=3, stdout="lost\n")
    assert cluster.wait_state(uuid, "Failure")["completedInstances"][0]["exitCode"] == 3


def test_work_dirs_go_when_their_task_is_deleted_and_leftovers_at_start(tmp_path, database_url):
    work = tmp_path / "work"
    (work / "old-task" / "0-1").mkdir(parents=True)
    (work / "old-task" / "0-1" / "result.txt").write_text("left by a crash")
    with serving(tmp_path) as cluster:
        wait_for(lambda: not (work / "old-task").exists(), timeout=10)
        uuid = cluster.submit()
        [key] = cluster.wait_dispatched(uuid, 1)
        (work / uuid / "0-1").mkdir(parents=True)  # as a runner keeps it after a failed upload
        cluster.executor.run(key, exit_code=0)
        cluster.wait_state(uuid, "Success")
        assert (work / uuid / "0-1").is_dir()
        assert cluster.delete(f"/tasks/{uuid}").status_code == 200
        wait_for(lambda: not (work / uuid).exists(), timeout=10)


def test_the_fault_route_exists_only_with_fault_injection(cluster):
    assert cluster.post("/admin/faults", json={"schedulerRounds": 1}).status_code == 404


def test_a_bad_fault_injection_is_refused(quick):
    bad = quick.post("/admin/faults", json={"schedulerRounds": -1})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_faults"


def test_results_that_could_not_be_stored_fail_the_instance_without_a_rerun(cluster):
    uuid = cluster.submit()
    [key] = cluster.wait_dispatched(uuid, 1)
    cluster.executor.specs.pop(key)
    cluster.executor.on_event(Finished(key, exit_code=0, results_failed=True, error=(
        "results upload to s3://out/ failed after 8 tries in 95 s: 1 of 1 result files not "
        "uploaded: 'r.txt'")))
    task = cluster.wait_state(uuid, "Failure")
    [instance] = task["completedInstances"]
    assert instance["executionAttemptCount"] == 1 and "'r.txt'" in instance["error"]
    assert cluster.executor.keys_of(uuid) == []  # not queued again
