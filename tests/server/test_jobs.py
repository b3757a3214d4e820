"""Jobs, dependencies, retries and the scheduler's timers, with a fake executor."""
from __future__ import annotations

import pytest

from .conftest import wait_for


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


def test_a_job_groups_tasks_and_terminate_cancels_what_remains(roomy):
    uuid = make_job(roomy, tags=["x"])
    assert job(roomy, uuid)["state"] == "Active" and job(roomy, uuid)["creationDate"]
    done = roomy.submit("echo", jobUuid=uuid)
    finish(roomy, done)
    roomy.wait_state(done, "Success")
    running = roomy.submit("sleep", jobUuid=uuid)
    roomy.wait_dispatched(running, 1)
    assert [t["uuid"] for t in roomy.get(f"/jobs/{uuid}/tasks").json()] == [done, running]
    assert roomy.post(f"/jobs/{uuid}/terminate").status_code == 200
    roomy.wait_state(running, "Cancelled")
    wait_for(lambda: job(roomy, uuid)["state"] == "Completed")
    late = roomy.post("/tasks", json={"name": "t", "profile": "docker-batch", "jobUuid": uuid,
                                     "constants": [{"key": "DOCKER_CMD", "value": "x"}]})
    assert late.status_code == 400 and "Completed" in late.json()["message"]


def test_a_dependent_starts_when_its_parent_succeeds(roomy):
    uuid = make_job(roomy, useDependencies=True)
    parent = roomy.submit("echo", jobUuid=uuid)
    child = roomy.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    roomy.wait_dispatched(parent, 1)
    assert roomy.executor.keys_of(child) == []
    assert roomy.task(child)["dependencies"]["state"] == "waiting"
    finish(roomy, parent)
    finish(roomy, child)
    doc = roomy.wait_state(child, "Success")
    assert doc["dependencies"]["state"] == "dependencyConditionsFulfilled"
    assert doc["dependencies"]["dependsOn"] == [parent]


def test_unmet_conditions_cancel_the_branch_and_name_the_parent(roomy):
    uuid = make_job(roomy, useDependencies=True)
    parent = roomy.submit("exit 1", jobUuid=uuid)
    on_success = roomy.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    grandchild = roomy.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [on_success]})
    on_failure = roomy.submit("echo", jobUuid=uuid, dependencies={"advancedDependsOn": [
        {"taskUuid": parent, "taskFinalStateCondition": ["failure", "cancelled"]}]})
    finish(roomy, parent, exit_code=1)
    cancelled = roomy.wait_state(on_success, "Cancelled")
    assert parent in cancelled["errors"][0]["message"]
    assert "ended Failure" in cancelled["errors"][0]["message"]
    assert cancelled["dependencies"]["state"] == "dependencyConditionsNotFulfilled"
    assert on_success in roomy.wait_state(grandchild, "Cancelled")["errors"][0]["message"]
    finish(roomy, on_failure)
    doc = roomy.wait_state(on_failure, "Success")
    assert doc["dependencies"]["advancedDependsOn"][0]["actualFinalState"] == "Failure"


def test_a_parent_already_final_is_resolved_at_submit(roomy):
    uuid = make_job(roomy, useDependencies=True)
    parent = roomy.submit("exit 1", jobUuid=uuid)
    finish(roomy, parent, exit_code=1)
    roomy.wait_state(parent, "Failure")
    child = roomy.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    roomy.wait_state(child, "Cancelled")


@pytest.mark.parametrize("fields, words", [
    ({"dependencies": {"dependsOn": ["x"]}}, "useDependencies"),
    ({"dependencies": {"dependsOn": ["a"], "advancedDependsOn": [{"taskUuid": "b"}]}},
     "not both"),
])
def test_bad_dependencies_are_refused(roomy, fields, words):
    response = roomy.post("/tasks", json={"name": "t", "profile": "docker-batch",
                                         "constants": [{"key": "DOCKER_CMD", "value": "x"}],
                                         **fields})
    assert response.status_code == 400 and words in response.json()["message"], response.text


def test_a_dependency_outside_the_job_is_refused(roomy):
    uuid = make_job(roomy, useDependencies=True)
    outsider = roomy.submit("echo")
    response = roomy.post("/tasks", json={
        "name": "t", "profile": "docker-batch", "jobUuid": uuid,
        "constants": [{"key": "DOCKER_CMD", "value": "x"}],
        "dependencies": {"dependsOn": [outsider]}})
    assert response.status_code == 400 and "not a task of job" in response.json()["message"]


def test_max_wall_time_terminates_the_job_with_a_reason(roomy):
    uuid = make_job(roomy, maxWallTime="00:00:01")
    task = roomy.submit("sleep", jobUuid=uuid)
    roomy.wait_dispatched(task, 1)
    doc = wait_for(lambda: (t := roomy.task(task))["state"] == "Cancelled" and t, timeout=10)
    assert "maxWallTime" in doc["errors"][0]["message"]
    wait_for(lambda: job(roomy, uuid)["state"] == "Completed")


def test_delete_needs_force_while_tasks_run(roomy):
    uuid = make_job(roomy)
    task = roomy.submit("sleep", jobUuid=uuid)
    key = roomy.wait_dispatched(task, 1)[0]
    refused = roomy.delete(f"/jobs/{uuid}?force=False")
    assert refused.status_code == 403 and "force" in refused.json()["message"]
    assert roomy.delete(f"/jobs/{uuid}?force=True").status_code == 200
    assert roomy.get(f"/jobs/{uuid}").status_code == 404
    assert roomy.get(f"/tasks/{task}").status_code == 404
    wait_for(lambda: key in roomy.executor.cancelled)


def test_jobs_are_paged_and_listed(roomy):
    make_job(roomy, path="/jobs", tags=["a"])
    second = make_job(roomy, tags=["b"])
    page = roomy.post("/jobs/paginate", json={"filter": {"operator": "Equal", "field": "Tags",
                                                        "value": "b"}}).json()
    assert [j["uuid"] for j in page["data"]] == [second]
    assert len(roomy.get("/jobs").json()) == 2 and len(roomy.get("/jobs?tag=a").json()) == 1


def test_only_failed_instances_are_retried_within_the_budget(roomy):
    task = roomy.submit("flaky", instanceCount=2,
                       retrySettings={"maxPerInstanceRetries": 2, "maxTotalRetries": 3})
    first = roomy.wait_dispatched(task, 2)
    roomy.executor.run(first[0], exit_code=0)
    roomy.executor.run(first[1], exit_code=1)
    again = wait_for(lambda: [k for k in roomy.executor.keys_of(task) if k.attempt == 2])
    assert again[0].instance_id == first[1].instance_id  # only the failed one
    roomy.executor.run(again[0], exit_code=1)
    third = wait_for(lambda: [k for k in roomy.executor.keys_of(task) if k.attempt == 3])
    roomy.executor.run(third[0], exit_code=1)  # per-instance budget (2 retries) spent
    doc = roomy.wait_state(task, "Failure")
    attempts = {i["instanceId"]: i["executionAttemptCount"] for i in doc["completedInstances"]}
    assert attempts == {0: 1, 1: 3}
    assert "attempt 3 exited with code 1 (retries used up)" in doc["errors"][0]["message"]


def test_the_total_budget_caps_retries_across_instances(roomy):
    task = roomy.submit("fail", instanceCount=3, retrySettings={"maxTotalRetries": 1})
    for key in roomy.wait_dispatched(task, 3):
        roomy.executor.run(key, exit_code=1)
    retried = wait_for(lambda: roomy.executor.keys_of(task))
    assert len(retried) == 1
    roomy.executor.run(retried[0], exit_code=1)
    doc = roomy.wait_state(task, "Failure")
    assert sum(i["executionAttemptCount"] for i in doc["completedInstances"]) == 4


def test_a_task_that_waits_too_long_for_a_slot_is_cancelled(roomy):
    blocker = roomy.submit("sleep", instanceCount=4)
    roomy.wait_dispatched(blocker, 4)
    task = roomy.submit("echo", maxTimeQueueSeconds=1)
    doc = wait_for(lambda: (t := roomy.task(task))["state"] == "Cancelled" and t, timeout=10)
    assert "maxTimeQueueSeconds=1" in doc["errors"][0]["message"]


def test_auto_delete_collects_a_finished_task_after_its_ttl(roomy):
    task = roomy.submit("echo", autoDeleteOnCompletion=True, completionTimeToLive="00:00:00")
    finish(roomy, task)
    wait_for(lambda: roomy.get(f"/tasks/{task}").status_code == 404)
    kept = roomy.submit("echo", autoDeleteOnCompletion=True, completionTimeToLive="01:00:00")
    finish(roomy, kept)
    roomy.wait_state(kept, "Success")


def test_deleting_a_parent_cancels_its_dependents(roomy):
    uuid = make_job(roomy, useDependencies=True)
    parent = roomy.submit("sleep", jobUuid=uuid)
    child = roomy.submit("echo", jobUuid=uuid, dependencies={"dependsOn": [parent]})
    assert roomy.delete(f"/tasks/{parent}").status_code == 200
    doc = roomy.wait_state(child, "Cancelled")
    assert "deleted" in doc["errors"][0]["message"]


@pytest.mark.parametrize("doc, words", [
    ({"name": ""}, "name"),
    ({"name": "j", "maxWallTime": "soon"}, "time span"),
    ({"name": "j", "maxWallTime": "00:00:00"}, "maxWallTime must be positive"),
    ({"name": "j", "useDependencies": [1]}, "useDependencies"),
    ({"name": "j", "poolUuid": "nope"}, "pool nope not found"),
    ([{"name": "j"}], "JSON object"),
])
def test_bad_jobs_are_refused_with_the_reason(roomy, doc, words):
    response = roomy.post("/jobs/", json=doc)
    assert response.status_code == 400 and words in response.json()["message"], response.text
    assert roomy.get("/jobs").json() == []


def test_bad_job_requests_are_named(roomy):
    uuid = make_job(roomy)
    bad_force = roomy.delete(f"/jobs/{uuid}?force=maybe")
    assert bad_force.status_code == 400 and "force" in bad_force.json()["message"]
    assert roomy.post(f"/jobs/{uuid}/terminate").status_code == 200
    again = roomy.post(f"/jobs/{uuid}/terminate")
    assert again.status_code == 403 and "already" in again.json()["message"]
    assert roomy.get("/jobs/unknown").status_code == 404
