"""GET /tasks/{uuid}/explain: why a task is not running (yet), one situation per reason, each
built on the real app (its scheduler, over the controllable fake executor)."""
from __future__ import annotations

from .conftest import Cluster, serving, wait_for
from .test_jobs import make_job
from .test_pools import make_pool


def explain(cluster: Cluster, uuid: str) -> dict:
    response = cluster.get(f"/tasks/{uuid}/explain")
    assert response.status_code == 200, response.text
    return response.json()


def codes(doc: dict) -> list[str]:
    return [reason["code"] for reason in doc["reasons"]]


def reason(doc: dict, code: str) -> dict:
    return next(r for r in doc["reasons"] if r["code"] == code)


def fill(cluster: Cluster, slots: int = 2) -> str:
    """A task whose instances take every executor slot (they stay running)."""
    uuid = cluster.submit("sleep 100", instanceCount=slots)
    cluster.wait_dispatched(uuid, slots)
    return uuid


def test_a_full_cluster_counts_the_instances_ahead_and_the_busy_slots(cluster):
    busy = fill(cluster)
    ahead = cluster.submit(instanceCount=3)
    mine = cluster.submit(instanceCount=2)
    doc = explain(cluster, mine)
    assert doc["uuid"] == mine and doc["state"] == "Submitted"
    assert doc["instances"] == {"Queued": 2}
    assert codes(doc) == ["capacity"]
    capacity = reason(doc, "capacity")
    assert (capacity["ahead"], capacity["busySlots"], capacity["totalSlots"],
            capacity["queued"]) == (3, 2, 2, 2)
    assert capacity["message"] == ("waiting for a slot: 2 of 2 executor slots are busy, and 3 "
                                   "instances of earlier tasks are ahead of it in the queue "
                                   "(2 instances of this task queued)")
    assert reason(explain(cluster, ahead), "capacity")["ahead"] == 0
    running = explain(cluster, busy)
    assert codes(running) == ["running"]
    assert reason(running, "running")["message"] == "2 of 2 instances are running"


def test_a_running_task_with_instances_still_queued_says_both(cluster):
    uuid = cluster.submit("sleep 100", instanceCount=3)
    cluster.wait_dispatched(uuid, 2)
    doc = explain(cluster, uuid)
    assert codes(doc) == ["running", "capacity"]
    assert reason(doc, "running")["message"] == "2 of 3 instances are running; 1 still queued"
    assert reason(doc, "capacity")["ahead"] == 0


def test_a_pool_not_yet_ready(roomy):
    pool = make_pool(roomy, instanceCount=1, preparationTask={"commandLine": "sleep 100"})
    wait_for(lambda: roomy.executor.keys_of(pool))  # its slot runs the preparation task
    task = roomy.submit(poolUuid=pool, profile=None)
    doc = explain(roomy, task)
    assert codes(doc) == ["pool"]
    found = reason(doc, "pool")
    state = roomy.get(f"/pools/{pool}").json()["state"]
    assert found["pool"]["uuid"] == pool and found["pool"]["state"] == state
    assert (found["pool"]["readySlots"], found["pool"]["preparingSlots"],
            found["pool"]["targetSlots"]) == (0, 1, 1)
    assert found["message"] == (f"pool p ({pool}) is {state}: none of its 1 slots is ready "
                                "yet (1 preparing)")


def test_a_full_pool(roomy):
    pool = make_pool(roomy, instanceCount=1)
    first = roomy.submit("sleep 100", poolUuid=pool, profile=None)
    roomy.wait_dispatched(first, 1)
    second = roomy.submit(poolUuid=pool, profile=None)
    found = reason(explain(roomy, second), "pool")
    assert (found["pool"]["readySlots"], found["pool"]["busySlots"], found["ahead"]) == (1, 1, 0)
    assert found["message"].startswith(f"pool p ({pool}) is full: 1 of its 1 ready slots")


def test_a_pending_dependency_names_the_parent_and_its_state(roomy):
    job = make_job(roomy, useDependencies=True)
    parent = roomy.submit("sleep 100", jobUuid=job, name="parent")
    roomy.executor.start(roomy.wait_dispatched(parent, 1)[0])
    roomy.wait_state(parent, "FullyExecuting")
    child = roomy.submit(jobUuid=job, dependencies={"dependsOn": [parent]},
                         maxTimeQueueSeconds=60)
    wait_for(lambda: roomy.task(child)["dependencies"]["state"] == "waiting")
    doc = explain(roomy, child)
    assert codes(doc) == ["dependency", "queue_timeout"]
    found = reason(doc, "dependency")
    assert found["parents"] == [{"uuid": parent, "name": "parent", "state": "FullyExecuting",
                                 "conditions": ["success"]}]
    assert f"parent ({parent}, FullyExecuting)" in found["message"]
    timeout = reason(doc, "queue_timeout")
    assert timeout["deadline"] is None and timeout["maxTimeQueueSeconds"] == 60
    assert "once its parents have ended" in timeout["message"]


def test_a_failed_dependency_cancels_the_task_and_the_explanation_says_so(roomy):
    job = make_job(roomy, useDependencies=True)
    parent = roomy.submit("exit 1", jobUuid=job)
    child = roomy.submit(jobUuid=job, dependencies={"dependsOn": [parent]})
    for key in roomy.wait_dispatched(parent, 1):
        roomy.executor.run(key, exit_code=1)
    roomy.wait_state(child, "Cancelled")
    doc = explain(roomy, child)
    assert codes(doc) == ["final"]
    assert f"parent task {parent} ended Failure" in reason(doc, "final")["message"]


def test_a_queue_timeout_coming_up(cluster):
    fill(cluster)
    uuid = cluster.submit(maxTimeQueueSeconds=3600)
    doc = explain(cluster, uuid)
    assert codes(doc) == ["capacity", "queue_timeout"]
    timeout = reason(doc, "queue_timeout")
    assert timeout["maxTimeQueueSeconds"] == 3600
    assert 3500 < timeout["secondsLeft"] <= 3600
    assert timeout["deadline"].endswith("Z") and timeout["deadline"] in timeout["message"]


def test_a_final_task_gives_its_state_and_failed_instances(cluster):
    uuid = cluster.submit(instanceCount=3)
    keys = cluster.wait_dispatched(uuid, 2)
    cluster.executor.run(keys[0], exit_code=0)
    cluster.executor.run(keys[1], exit_code=2)
    last = wait_for(lambda: [k for k in cluster.executor.keys_of(uuid) if k.instance_id == 2])
    cluster.executor.run(last[0], exit_code=2)
    cluster.wait_state(uuid, "Failure")
    doc = explain(cluster, uuid)
    assert codes(doc) == ["final"]
    final = reason(doc, "final")
    assert final["state"] == "Failure" and final["failedRange"] == "1-2"
    assert final["message"] == ("the task ended Failure: nothing more will run; 2 instances "
                                "failed (1-2)")


def test_an_unsatisfiable_constraint_after_the_node_kinds_changed(tmp_path, database_url):
    """Accepted on one kind of node, queued behind a full cluster; the server comes back on
    another kind: explain names the constraint, and the scheduler cancels the task rather
    than run it on hardware it excludes."""
    old = {"cores": 8, "memory_mb": 16384, "cpu_model": "AMD EPYC 7B13"}
    new = {"cores": 2, "memory_mb": 4096, "cpu_model": "Intel Xeon"}
    constraint = [{"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 8}]
    with serving(tmp_path, nodes=[old]) as before:
        busy = fill(before)
        uuid = before.submit(hardwareConstraints=constraint)
    with serving(tmp_path, nodes=[new]) as after:
        after.wait_dispatched(busy, 2)  # re-queued by the restart, and dispatched first
        doc = explain(after, uuid)
        assert codes(doc) == ["constraint"]
        found = reason(doc, "constraint")
        assert found["constraints"] == constraint
        assert found["offered"][0]["cores"] == 2
        assert "MinimumCoreHardwareConstraint(coreCount=8)" in found["message"]
        for key in after.executor.keys_of(busy):
            after.executor.run(key)
        cancelled = after.wait_state(uuid, "Cancelled")
        assert cancelled["errors"][0]["code"] == "unsatisfiable_hardware_constraint"
        assert after.executor.keys_of(uuid) == []
        assert "MinimumCoreHardwareConstraint" in reason(explain(after, uuid), "final")["message"]


def test_another_users_task_is_a_404(cluster):
    uuid = cluster.submit()
    response = cluster.post("/admin/users", json={"email": "eve@example.com"})
    assert response.status_code == 201, response.text
    eve = {"Authorization": response.json()["token"]}
    other = cluster.client.get(f"/tasks/{uuid}/explain", headers=eve)
    assert other.status_code == 404 and other.json()["code"] == "task_not_found"
    assert cluster.get("/tasks/no-such-task/explain").json()["code"] == "task_not_found"
