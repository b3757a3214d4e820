"""Two API replicas on two hosts, on one PostgreSQL and one Ray cluster on a third host
(``replicated.py``): a long poll on the standby is woken across hosts, and SIGKILLing the
scheduler's holder mid-run loses no task and runs no instance twice, unless a recorded
infrastructure failure re-queued it."""
from __future__ import annotations

import sys
import time

import pytest

from .conftest import deployed, wait_for
from .replicated import SLOTS, Replicated

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.postgres]

# Each run reports to the run log on host 3 when it starts (a run counts if it started) and
# when its work is done.
REPORT = """
import os, time, urllib.request
me = "/" + os.environ["TASK_UUID"] + "/" + os.environ["INSTANCE_ID"]
urllib.request.urlopen("%(log)s/start" + me, timeout=10)
time.sleep(float(os.environ["SECONDS"]))
urllib.request.urlopen("%(log)s/end" + me, timeout=10)
"""


@pytest.fixture(scope="module")
def replicated(topology, tmp_path_factory):
    with deployed(Replicated, topology, tmp_path_factory.mktemp("replicas"), "qcr-") as running:
        yield running


def _submit(replicated: Replicated, replica, seconds: float, count: int) -> str:
    """A task whose instances report each run to the run log, then sleep ``seconds``."""
    script = REPORT % {"log": replicated.run_log.url}
    return replicated.submit(replica, f"{sys.executable} -c '{script}'",
                             constants={"SECONDS": str(seconds)}, instanceCount=count)


def test_one_replica_per_host_one_schedules(replicated):
    one, two = replicated.replicas
    assert (replicated.role(one), replicated.role(two)) == ("scheduler", "standby")
    nodes = replicated.call(one, "GET", "/hardware-constraints").json()["nodes"]
    assert sorted((n["address"], n["slots"]) for n in nodes) == [  # the head runs nothing
        (replicated.h1.address, SLOTS), (replicated.h2.address, SLOTS), (replicated.h3.address, 0)]
    print(f"three hosts, two replicas up in {replicated.started_in:.1f} s")


def test_a_long_poll_on_the_standby_is_woken_across_hosts(replicated):
    """The task runs under replica 1's scheduler; a long poll on replica 2 (another host), made
    while it runs, answers when it ends, woken through PostgreSQL's NOTIFY, not at the end of
    its wait."""
    one, two = replicated.replicas
    uuid = _submit(replicated, one, 5, 1)
    wait_for(lambda: replicated.run_log.running(uuid, 0), 120, "the instance running")
    window = 120
    started = time.monotonic()
    task = replicated.call(two, "GET", f"/tasks/{uuid}", params={"wait": window,
                                                                 "until": "final"},
                           timeout=window + 10).json()
    seconds = time.monotonic() - started
    assert task["state"] == "Success", task
    assert replicated.run_log.count(uuid, 0) == replicated.run_log.count(uuid, 0, "end") == 1
    cap = replicated.call(two, "GET", "/settings").json()["taskWaitMaxSeconds"]
    # asked while it ran, answered final before the server's cap on a wait: a wake-up ended it
    assert seconds < cap - 5, (seconds, cap)


def test_killing_the_scheduler_holder_mid_run_ends_every_task_running_each_instance_once(
        replicated):
    """Two tasks of 3 instances, submitted to the standby (replica 2), fill the 4 slots of
    hosts 1 and 2 under replica 1's scheduler; replica 1 is SIGKILLed mid-run. Replica 2 takes
    the scheduler over; every task ends in success; each instance ran exactly once, unless a
    recorded infrastructure failure re-queued it (then once per attempt at most)."""
    one, two = replicated.replicas
    tasks = [_submit(replicated, two, 10, 3) for _ in range(2)]
    try:  # the 4 slots busy at once, each instance started and not done
        running = wait_for(lambda: (found := {(u, i) for u in tasks for i in range(3)
                                              if replicated.run_log.running(u, i)})
                           and len(found) == 2 * SLOTS and found, 120, "4 instances running")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{replicated.explain(tasks)}") from None
    killed_at = time.monotonic()
    one.kill()
    wait_for(lambda: replicated.role(two) == "scheduler", 60, "replica 2 took the scheduler")
    print(f"replica 2 took the scheduler {time.monotonic() - killed_at:.1f} s after the kill")
    for uuid in tasks:
        assert replicated.final(two, uuid)["state"] == "Success", replicated.logs()
    rows = [row for uuid in tasks for row in replicated.query(
        "SELECT t.uuid, i.instance_id, i.attempt, i.infra_failures, i.state, i.error "
        "FROM instances i JOIN tasks t ON t.id = i.task_id WHERE t.uuid = :uuid", uuid=uuid)]
    assert len(rows) == 6
    print("(attempt, infra failures, runs) by instance:",
          [(a, f, replicated.run_log.count(u, i)) for u, i, a, f, *_ in rows])
    for uuid, instance_id, attempt, infra_failures, state, error in rows:
        runs = replicated.run_log.count(uuid, instance_id)
        where = (uuid, instance_id, attempt, infra_failures, runs, error)
        assert state == "Success" and attempt == 1 + infra_failures, where
        if infra_failures:  # re-queued after a recorded infra failure: a run per attempt
            assert 1 <= runs <= attempt, where
        else:
            assert runs == 1, where
    # re-queued: exactly those running when the holder died (the 2 queued then ran once)
    assert {(uuid, instance_id) for uuid, instance_id, _, failures, *_ in rows
            if failures} == running
