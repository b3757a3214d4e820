"""Jobs, dependencies, retries and the scheduler's timers, with a fake executor."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qcompute.server.bootstrap import client_config_path, read_token

from .conftest import Cluster, make_cluster, wait_for


@pytest.fixture
def fast(tmp_path):
    settings, app, storage, holder = make_cluster(tmp_path, capacity=4,
                                                  scheduler_tick_seconds=0.05)
    with TestClient(app) as client:
        yield Cluster(client, holder["executor"], storage, read_token(client_config_path(settings)))


def make_job(cluster, path: str = "/jobs/", **fields) -> str:
    response = cluster.post(path, json={"name": "j", "state": "", **fields})
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def job(cluster, uuid: str) -> dict:
    response = cluster.get(f"/jobs/{uuid}")
    assert response.status_code == 200, response.text
    return response.json()


def finish(cluster, uuid: str, exit_code: int = 0) -> None:
    for key in cluster.wait_dispatched(uuid, 1):
        cluster.executor.run(key, exit_code=exit_code)


def test_a_job_groups_tasks_and_terminate_cancels_what_remains(fast):
    uuid = make_job(fast, tags=["x"])
    assert job(fast, uuid)["state"] == "Active" and job(fast, uuid)["creationDate"]
    done = fast.submit("echo", jobUuid=uuid)
    finish(fast, done)
    fast.wait_state(done, "Success")
    running = fast.submit("sleep", jobUuid=uuid)
    fast.wait_dispatched(running, 1)
    assert [t["uuid"] for t in fast.get(f"/jobs/{uuid}/tasks").json()] == [done, running]
    assert fast.post(f"/jobs/{uuid}/terminate").status_code == 200
    fast.wait_state(running, "Cancelled")
    wait_for(lambda: job(fast, uuid)["state"] == "Completed")
    late = fast.post("/tasks", json={"name": "t", "profile": "docker-batch", "jobUuid": uuid,
                                     "constants": [{"key": "DOCKER_CMD", "value": "x"}]})
    assert late.status_code == 400 and "Completed" in late.json()["message"]


def test_a_dependent_starts_when_its_parent_succeeds(fast):
    uuid = make_job(fast, useDependencies=True)
    parent = fast.submit("echo", jobUuid=uuid)
    child = fast.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    fast.wait_dispatched(parent, 1)
    assert fast.executor.keys_of(child) == []
    assert fast.task(child)["dependencies"]["state"] == "waiting"
    finish(fast, parent)
    finish(fast, child)
    doc = fast.wait_state(child, "Success")
    assert doc["dependencies"]["state"] == "dependencyConditionsFulfilled"
    assert doc["dependencies"]["dependsOn"] == [parent]


def test_unmet_conditions_cancel_the_branch_and_name_the_parent(fast):
    uuid = make_job(fast, useDependencies=True)
    parent = fast.submit("exit 1", jobUuid=uuid)
    on_success = fast.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    grandchild = fast.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [on_success]})
    on_failure = fast.submit("echo", jobUuid=uuid, dependencies={"advancedDependsOn": [
        {"taskUuid": parent, "taskFinalStateCondition": ["failure", "cancelled"]}]})
    finish(fast, parent, exit_code=1)
    cancelled = fast.wait_state(on_success, "Cancelled")
    assert parent in cancelled["errors"][0]["message"]
    assert "ended Failure" in cancelled["errors"][0]["message"]
    assert cancelled["dependencies"]["state"] == "dependencyConditionsNotFulfilled"
    assert on_success in fast.wait_state(grandchild, "Cancelled")["errors"][0]["message"]
    finish(fast, on_failure)
    doc = fast.wait_state(on_failure, "Success")
    assert doc["dependencies"]["advancedDependsOn"][0]["actualFinalState"] == "Failure"


def test_a_parent_already_final_is_resolved_at_submit(fast):
    uuid = make_job(fast, useDependencies=True)
    parent = fast.submit("exit 1", jobUuid=uuid)
    finish(fast, parent, exit_code=1)
    fast.wait_state(parent, "Failure")
    child = fast.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    fast.wait_state(child, "Cancelled")


@pytest.mark.parametrize("fields, words", [
    ({"dependencies": {"dependsOn": ["x"]}}, "useDependencies"),
    ({"dependencies": {"dependsOn": ["a"], "advancedDependsOn": [{"taskUuid": "b"}]}},
     "not both"),
])
def test_bad_dependencies_are_refused(fast, fields, words):
    response = fast.post("/tasks", json={"name": "t", "profile": "docker-batch",
                                         "constants": [{"key": "DOCKER_CMD", "value": "x"}],
                                         **fields})
    assert response.status_code == 400 and words in response.json()["message"], response.text


def test_a_dependency_outside_the_job_is_refused(fast):
    uuid = make_job(fast, useDependencies=True)
    outsider = fast.submit("echo")
    response = fast.post("/tasks", json={
        "name": "t", "profile": "docker-batch", "jobUuid": uuid,
        "constants": [{"key": "DOCKER_CMD", "value": "x"}],
        "dependencies": {"dependsOn": [outsider]}})
    assert response.status_code == 400 and "not a task of job" in response.json()["message"]


def test_max_wall_time_terminates_the_job_with_a_reason(fast):
    uuid = make_job(fast, maxWallTime="00:00:01")
    task = fast.submit("sleep", jobUuid=uuid)
    fast.wait_dispatched(task, 1)
    doc = wait_for(lambda: (t := fast.task(task))["state"] == "Cancelled" and t, timeout=10)
    assert "maxWallTime" in doc["errors"][0]["message"]
    wait_for(lambda: job(fast, uuid)["state"] == "Completed")


def test_delete_needs_force_while_tasks_run(fast):
    uuid = make_job(fast)
    task = fast.submit("sleep", jobUuid=uuid)
    key = fast.wait_dispatched(task, 1)[0]
    refused = fast.delete(f"/jobs/{uuid}?force=False")
    assert refused.status_code == 403 and "force" in refused.json()["message"]
    assert fast.delete(f"/jobs/{uuid}?force=True").status_code == 200
    assert fast.get(f"/jobs/{uuid}").status_code == 404
    assert fast.get(f"/tasks/{task}").status_code == 404
    wait_for(lambda: key in fast.executor.cancelled)


def test_jobs_are_paged_and_listed(fast):
    make_job(fast, path="/jobs", tags=["a"])
    second = make_job(fast, tags=["b"])
    page = fast.post("/jobs/paginate", json={"filter": {"operator": "Equal", "field": "Tags",
                                                        "value": "b"}}).json()
    assert [j["uuid"] for j in page["data"]] == [second]
    assert len(fast.get("/jobs").json()) == 2 and len(fast.get("/jobs?tag=a").json()) == 1


def test_only_failed_instances_are_retried_within_the_budget(fast):
    task = fast.submit("flaky", instanceCount=2,
                       retrySettings={"maxPerInstanceRetries": 2, "maxTotalRetries": 3})
    first = fast.wait_dispatched(task, 2)
    fast.executor.run(first[0], exit_code=0)
    fast.executor.run(first[1], exit_code=1)
    again = wait_for(lambda: [k for k in fast.executor.keys_of(task) if k.attempt == 2])
    assert again[0].instance_id == first[1].instance_id  # only the failed one
    fast.executor.run(again[0], exit_code=1)
    third = wait_for(lambda: [k for k in fast.executor.keys_of(task) if k.attempt == 3])
    fast.executor.run(third[0], exit_code=1)  # per-instance budget (2 retries) spent
    doc = fast.wait_state(task, "Failure")
    attempts = {i["instanceId"]: i["executionAttemptCount"] for i in doc["completedInstances"]}
    assert attempts == {0: 1, 1: 3}
    assert "attempt 3 exited with code 1 (retries used up)" in doc["errors"][0]["message"]


def test_the_total_budget_caps_retries_across_instances(fast):
    task = fast.submit("fail", instanceCount=3, retrySettings={"maxTotalRetries": 1})
    for key in fast.wait_dispatched(task, 3):
        fast.executor.run(key, exit_code=1)
    retried = wait_for(lambda: fast.executor.keys_of(task))
    assert len(retried) == 1
    fast.executor.run(retried[0], exit_code=1)
    doc = fast.wait_state(task, "Failure")
    assert sum(i["executionAttemptCount"] for i in doc["completedInstances"]) == 4


def test_a_task_that_waits_too_long_for_a_slot_is_cancelled(fast):
    blocker = fast.submit("sleep", instanceCount=4)
    fast.wait_dispatched(blocker, 4)
    task = fast.submit("echo", maxTimeQueueSeconds=1)
    doc = wait_for(lambda: (t := fast.task(task))["state"] == "Cancelled" and t, timeout=10)
    assert "maxTimeQueueSeconds=1" in doc["errors"][0]["message"]


def test_auto_delete_collects_a_finished_task_after_its_ttl(fast):
    task = fast.submit("echo", autoDeleteOnCompletion=True, completionTimeToLive="00:00:00")
    finish(fast, task)
    wait_for(lambda: fast.get(f"/tasks/{task}").status_code == 404)
    kept = fast.submit("echo", autoDeleteOnCompletion=True, completionTimeToLive="01:00:00")
    finish(fast, kept)
    fast.wait_state(kept, "Success")


def test_deleting_a_parent_cancels_its_dependents(fast):
    uuid = make_job(fast, useDependencies=True)
    parent = fast.submit("sleep", jobUuid=uuid)
    child = fast.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    assert fast.delete(f"/tasks/{parent}").status_code == 200
    doc = fast.wait_state(child, "Cancelled")
    assert "deleted" in doc["errors"][0]["message"]
