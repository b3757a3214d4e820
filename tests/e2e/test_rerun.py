"""task.rerun_failed() and task.explain() on the real embedded cluster."""
from __future__ import annotations

import pytest

from qcompute import ResourceStateError, TaskState
from qcompute.explain import RERUN_LABEL

# Every instance writes a result and says so; the odd ones fail.
COMMAND = ("sh -c 'echo ran ${INSTANCE_ID} > out-${INSTANCE_ID}.txt; echo ran ${INSTANCE_ID}; "
           "test $((${INSTANCE_ID} % 2)) -eq 0'")


def test_rerun_failed_runs_exactly_the_failed_instances(conn):
    results = conn.create_bucket("e2e-rerun-out")
    task = conn.create_task("sweep", "docker-batch", 6)
    task.constants["DOCKER_CMD"] = COMMAND
    task.results = results
    task.tags = ["sweep"]
    with pytest.raises(ResourceStateError, match="needs a finished task"):
        task.submit().rerun_failed()
    task.wait()
    assert task.state == TaskState.FAILURE
    assert task.status.failed_range == "1,3,5"
    assert task.explain().codes == ["final"]

    rerun = task.rerun_failed()
    assert rerun.uuid != task.uuid
    assert rerun.name == "sweep (rerun of failed)"
    assert rerun.advanced_range == "1,3,5"
    assert rerun.labels[RERUN_LABEL] == task.uuid and rerun.tags == ["sweep"]
    assert rerun.results.uuid == results.uuid
    rerun.wait()
    assert sorted(c.instance_id for c in rerun.completed_instances) == [1, 3, 5]
    assert sorted(rerun.stdout().splitlines()) == ["ran 1", "ran 3", "ran 5"]
    assert rerun.status.failed_range == "1,3,5"  # the same command fails the same way
    assert conn.retrieve_task(rerun.uuid).constants == task.constants
    assert sorted(results.list_files()) == [f"out-{i}.txt" for i in range(6)]  # both runs write here

    ok = conn.create_task("even only", "docker-batch", "0,2")
    ok.constants["DOCKER_CMD"] = COMMAND
    ok.run()
    assert ok.state == TaskState.SUCCESS
    with pytest.raises(ResourceStateError, match="no failed instance"):
        ok.rerun_failed()
