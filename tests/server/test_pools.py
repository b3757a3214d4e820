"""Pools on the API with a fake executor: slots held, preparation, states, elastic resizing."""
from __future__ import annotations

import pytest

from qcompute.server.executors.base import Finished

from .conftest import serving, wait_for


def make_pool(cluster, **fields) -> str:
    doc = {"name": "p", "profile": "docker-batch", "instanceCount": 2,
           "constants": [{"key": "POOL_C", "value": "from-pool"}], **fields}
    response = cluster.post("/pools", json=doc)
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def pool(cluster, uuid: str) -> dict:
    response = cluster.get(f"/pools/{uuid}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_pool(cluster, uuid: str, state: str) -> dict:
    return wait_for(lambda: (p := pool(cluster, uuid))["state"] == state and p)


def test_a_static_pool_prepares_each_slot_then_runs_its_tasks(roomy):
    uuid = make_pool(roomy, preparationTask={"commandLine": "echo prep $SLOT_ID"})
    preps = roomy.wait_dispatched(uuid, 2)
    assert [k.instance_id for k in preps] == [0, 1]
    assert roomy.executor.specs[preps[0]].command == "echo prep $SLOT_ID"
    assert pool(roomy, uuid)["state"] == "FullyDispatched"
    task = roomy.submit("echo $POOL_C", poolUuid=uuid, profile=None, instanceCount=3)
    assert roomy.executor.keys_of(task) == []  # nothing runs before the preparation
    roomy.executor.run(preps[0], stdout="prepared 0\n")
    wait_pool(roomy, uuid, "PartiallyExecuting")
    roomy.executor.run(preps[1])
    doc = wait_pool(roomy, uuid, "FullyExecuting")
    assert doc["totalSlotCapacity"] == 2 and doc["creationDate"].endswith("Z")
    keys = roomy.wait_dispatched(task, 2)
    assert len(roomy.executor.keys_of(task)) == 2  # the pool's 2 slots, not the cluster's 4
    assert roomy.executor.specs[keys[0]].env["POOL_C"] == "from-pool"
    assert roomy.task(task)["poolUuid"] == uuid
    assert "prepared 0" in roomy.get(f"/pools/{uuid}/stdout").text
    assert roomy.post(f"/pools/{uuid}/stdout/0").text == "prepared 0\n"
    for key in keys:
        roomy.executor.run(key)
    last = roomy.wait_dispatched(task, 1)
    roomy.executor.run(last[0])
    roomy.wait_state(task, "Success")


def test_a_pool_holds_its_slots_away_from_other_tasks(roomy):
    uuid = make_pool(roomy, instanceCount=3)
    wait_pool(roomy, uuid, "FullyExecuting")  # no preparation: slots are ready at once
    assert slot_counts(roomy) == (4, 3, 1)  # idle, the pool's slots are held, not free
    other = roomy.submit("echo", instanceCount=3)
    roomy.wait_dispatched(other, 1)
    assert len(roomy.executor.keys_of(other)) == 1  # 4 slots - 3 held
    assert slot_counts(roomy) == (4, 3, 0)
    inside = roomy.submit("echo", poolUuid=uuid, profile=None)
    roomy.wait_dispatched(inside, 1)
    assert slot_counts(roomy) == (4, 3, 0)  # a pool task runs in a held slot


def slot_counts(cluster) -> tuple[int, int, int]:
    """(slots, held by pools, free) of the node /health lists, as /hardware-constraints."""
    node, = cluster.client.get("/health").json()["nodes"]
    assert cluster.get("/hardware-constraints").json()["nodes"] == [node]
    return node["slots"], node["heldSlots"], node["freeSlots"]


def test_closing_cancels_the_unfinished_tasks_then_gives_the_slots_back(roomy):
    uuid = make_pool(roomy, instanceCount=1)
    wait_pool(roomy, uuid, "FullyExecuting")
    running = roomy.submit("sleep 30", poolUuid=uuid, profile=None, instanceCount=2)
    queued = roomy.submit("sleep 30", poolUuid=uuid, profile=None)
    key = roomy.wait_dispatched(running, 1)[0]
    roomy.executor.start(key)
    stopping: list = []
    roomy.executor.cancel = stopping.append  # the runner takes its time to stop
    assert roomy.post(f"/pools/{uuid}/close").status_code == 200
    wait_for(lambda: stopping == [key])
    assert roomy.wait_state(running, "PendingCancel")["poolUuid"] == uuid
    assert roomy.wait_state(queued, "Cancelled")["errors"][0]["code"] == "pool_closed"
    assert pool(roomy, uuid)["state"] == "Closing"
    refused = roomy.post("/tasks", json={"name": "late", "poolUuid": uuid,
                                       "constants": [{"key": "DOCKER_CMD", "value": "x"}]})
    assert refused.status_code == 400 and refused.json()["code"] == "pool_closed"
    roomy.executor.on_event(Finished(key, exit_code=-15, cancelled=True))
    doc = wait_pool(roomy, uuid, "Closed")
    assert doc["endDate"] and doc["totalSlotCapacity"] == 0
    ended = roomy.wait_state(running, "Cancelled")
    assert ended["errors"] == [{"code": "pool_closed", "debug": None,
                                "message": f"pool {uuid} was closed before the task ended"}]
    assert [i["state"] for i in ended["completedInstances"]] == ["Cancelled", "Cancelled"]
    other = roomy.submit("echo", instanceCount=4)
    assert len(roomy.wait_dispatched(other, 4)) == 4
    assert roomy.post(f"/pools/{uuid}/close").status_code == 403


def test_closing_a_pool_whose_tasks_ended_closes_it_at_once_and_keeps_them(roomy):
    uuid = make_pool(roomy, instanceCount=1)
    wait_pool(roomy, uuid, "FullyExecuting")
    task = roomy.submit("echo", poolUuid=uuid, profile=None)
    roomy.executor.run(roomy.wait_dispatched(task, 1)[0])
    roomy.wait_state(task, "Success")
    assert roomy.post(f"/pools/{uuid}/close").json()["uuid"] == uuid
    assert wait_pool(roomy, uuid, "Closed")["totalSlotCapacity"] == 0
    assert roomy.executor.cancelled == []
    done = roomy.task(task)
    assert done["state"] == "Success" and done["errors"] == []


def test_a_restart_while_closing_still_cancels_the_task_and_closes_the_pool(tmp_path, database_url):
    with serving(tmp_path, scheduler_tick_seconds=0.05) as first:
        uuid = make_pool(first, instanceCount=1)
        task = first.submit("sleep 30", poolUuid=uuid, profile=None)
        first.executor.start(first.wait_dispatched(task, 1)[0])
        first.executor.cancel = lambda key: None  # the server stops before the runner does
        assert first.post(f"/pools/{uuid}/close").status_code == 200
        first.wait_state(task, "PendingCancel")
    with serving(tmp_path, scheduler_tick_seconds=0.05) as second:  # not re-queued
        assert second.wait_state(task, "Cancelled")["errors"][0]["code"] == "pool_closed"
        assert wait_pool(second, uuid, "Closed")["totalSlotCapacity"] == 0
        assert second.executor.specs == {}


def test_a_failed_preparation_fails_the_pool_and_cancels_its_tasks(roomy):
    uuid = make_pool(roomy, instanceCount=1, preparationTask={"commandLine": "exit 3"})
    prep = roomy.wait_dispatched(uuid, 1)[0]
    task = roomy.submit("echo", poolUuid=uuid, profile=None)
    roomy.executor.run(prep, exit_code=3)
    doc = wait_pool(roomy, uuid, "Failure")
    assert "slot 0" in doc["errors"][0]["message"] and "code 3" in doc["errors"][0]["message"]
    cancelled = roomy.wait_state(task, "Cancelled")
    assert f"pool {uuid} failed" in cancelled["errors"][0]["message"]


def test_deleting_a_pool_cancels_its_tasks_then_removes_it(roomy):
    uuid = make_pool(roomy, instanceCount=1)
    wait_pool(roomy, uuid, "FullyExecuting")
    task = roomy.submit("sleep", poolUuid=uuid, profile=None)
    roomy.wait_dispatched(task, 1)
    assert roomy.delete(f"/pools/{uuid}").status_code == 200
    roomy.wait_state(task, "Cancelled")
    wait_for(lambda: roomy.get(f"/pools/{uuid}").status_code == 404)
    assert roomy.task(task)["poolUuid"] == uuid  # the task keeps what it was submitted with


def test_an_elastic_pool_grows_with_the_queue_and_shrinks_when_idle(roomy):
    uuid = make_pool(roomy, instanceCount=None, elasticProperty={
        "isElastic": True, "minTotalSlots": 0, "maxTotalSlots": 3, "minIdleSlots": 0,
        "resizePeriod": 0, "rampResizeFactor": 1, "minIdleTimeSeconds": 0})
    assert wait_pool(roomy, uuid, "FullyExecuting")["totalSlotCapacity"] == 0
    task = roomy.submit("echo", poolUuid=uuid, profile=None, instanceCount=5)
    keys = roomy.wait_dispatched(task, 3)
    doc = pool(roomy, uuid)
    assert doc["totalSlotCapacity"] == 3 and doc["slots"]["busy"] == 3
    assert doc["queuedOrRunningTaskInstancesCount"] == 5
    for key in keys:
        roomy.executor.run(key)
    for key in roomy.wait_dispatched(task, 2):
        roomy.executor.run(key)
    roomy.wait_state(task, "Success")
    wait_for(lambda: pool(roomy, uuid)["totalSlotCapacity"] == 0)


def test_elastic_settings_changed_with_put_take_effect(roomy):
    uuid = make_pool(roomy, instanceCount=None, elasticProperty={
        "isElastic": True, "minTotalSlots": 1, "maxTotalSlots": 1, "resizePeriod": 0})
    wait_for(lambda: pool(roomy, uuid)["totalSlotCapacity"] == 1)
    doc = pool(roomy, uuid)
    doc["elasticProperty"].update(minTotalSlots=2, maxTotalSlots=4)
    response = roomy.put(f"/pools/{uuid}", json=doc)  # the whole document, as the SDK sends it
    assert response.status_code == 200, response.text
    wait_for(lambda: pool(roomy, uuid)["totalSlotCapacity"] == 2)
    doc["profile"] = "other"
    fixed = roomy.put(f"/pools/{uuid}", json=doc)
    assert fixed.status_code == 400 and "profile cannot change" in fixed.json()["message"]


def test_a_slow_ramp_grows_by_a_share_of_the_gap_per_period(roomy):
    uuid = make_pool(roomy, instanceCount=None, elasticProperty={
        "isElastic": True, "minTotalSlots": 0, "maxTotalSlots": 4, "resizePeriod": 3600,
        "rampResizeFactor": 0.5})
    task = roomy.submit("echo", poolUuid=uuid, profile=None, instanceCount=4)
    roomy.wait_dispatched(task, 2)
    assert pool(roomy, uuid)["totalSlotCapacity"] == 2  # half the gap, then wait a period


@pytest.mark.parametrize("doc, words", [
    ({"instanceCount": 5}, "this cluster has 4"),
    ({"profile": "nope"}, "unknown profile"),
    ({"elasticProperty": {"isElastic": True, "minTotalSlots": 3, "maxTotalSlots": 1}},
     "above maxTotalSlots"),
    ({"elasticProperty": {"isElastic": True, "rampResizeFactor": 2}}, "rampResizeFactor"),
    ({"completionTimeToLive": "soon"}, "time span"),
    ({"advancedResourceBuckets": [{"bucketName": "A"}]}, "bucket name"),
])
def test_bad_pools_are_refused_with_the_reason(roomy, doc, words):
    response = roomy.post("/pools", json={"name": "p", "profile": "docker-batch", **doc})
    assert response.status_code == 400 and words in response.json()["message"], response.text
    assert roomy.get("/pools").json() == []


def test_a_task_in_a_pool_takes_the_pool_profile(roomy):
    uuid = make_pool(roomy)
    response = roomy.post("/tasks", json={"name": "t", "poolUuid": uuid, "profile": "other",
                                        "constants": [{"key": "DOCKER_CMD", "value": "x"}]})
    assert response.status_code == 400 and "pool's profile" in response.json()["message"]


def test_pools_are_listed_and_paged_with_tag_filters(roomy):
    first = make_pool(roomy, instanceCount=1, tags=["a"])
    make_pool(roomy, instanceCount=1, tags=["b"])
    page = roomy.post("/pools/paginate", json={"filter": {"operator": "Equal", "field": "Tags",
                                                        "value": "a"}}).json()
    assert [p["uuid"] for p in page["data"]] == [first] and page["isTruncated"] is False
    summaries = roomy.post("/pools/summaries/paginate", json={"maximumResults": 1}).json()
    assert len(summaries["data"]) == 1 and summaries["nextToken"]
    assert len(roomy.get("/pools/summaries").json()) == 2


def test_deleting_a_preparing_pool_stops_its_preparation(roomy):
    uuid = make_pool(roomy, instanceCount=1, preparationTask={"commandLine": "sleep 100"})
    prep = roomy.wait_dispatched(uuid, 1)[0]
    assert roomy.delete(f"/pools/{uuid}").status_code == 200
    wait_for(lambda: prep in roomy.executor.cancelled)
    wait_for(lambda: roomy.get(f"/pools/{uuid}").status_code == 404)
    other = roomy.submit("echo", instanceCount=4)
    assert len(roomy.wait_dispatched(other, 4)) == 4  # the slot came back


def test_pool_secrets_reach_its_preparation_and_its_tasks(roomy):
    for key, value in (("pool/token", "pool-secret-1"), ("task/token", "task-secret-2")):
        assert roomy.put(f"/secrets-manager/data/{key}", json={"Value": value}).status_code < 300
    uuid = make_pool(roomy, instanceCount=1, preparationTask={"commandLine": "echo prep"},
                     secretsAccessRights={"bySecret": [{"key": "pool/token"}]})
    prep = roomy.wait_dispatched(uuid, 1)[0]
    assert roomy.executor.specs[prep].secret_env["QARNOT_SECRET__POOL_TOKEN"] == "pool-secret-1"
    roomy.executor.run(prep, stdout="leaked pool-secret-1\n")
    assert "pool-secret-1" not in roomy.get(f"/pools/{uuid}/stdout").text
    task = roomy.submit("echo", poolUuid=uuid, profile=None,
                      secretsAccessRights={"byPrefix": [{"prefix": "task/"}]})
    env = roomy.executor.specs[roomy.wait_dispatched(task, 1)[0]].secret_env
    assert env["QARNOT_SECRET__POOL_TOKEN"] == "pool-secret-1"
    assert env["QARNOT_SECRET__TASK_TOKEN"] == "task-secret-2"
    assert roomy.task(task)["waitForPoolResourcesSynchronization"] is False


def test_bad_pool_requests_are_named(roomy):
    uuid = make_pool(roomy, instanceCount=1)
    not_object = roomy.put(f"/pools/{uuid}", json=[1])
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["message"]
    switch = roomy.put(f"/pools/{uuid}", json={"elasticProperty": {"isElastic": True}})
    assert switch.status_code == 400 and "static and elastic" in switch.json()["message"]
    assert roomy.get("/pools/unknown").status_code == 404
    assert roomy.post("/pools/unknown/close").status_code == 404
    assert roomy.post("/pools", json=[{"name": "p"}]).status_code == 400


def test_a_fresh_read_of_a_pool_deleted_meanwhile_is_a_404(roomy, monkeypatch):
    """The scheduler ends a pool's deletion on its own: a fresh read that found the pool, then
    records its cursor after the row is gone, answers 404 (it was a 500: a foreign key)."""
    from types import SimpleNamespace

    from qcompute.server.services import pools as service

    uuid = make_pool(roomy)
    found = service.get_pool
    monkeypatch.setattr(service, "get_pool", lambda *args: SimpleNamespace(
        id=10**6, state=found(*args).state))  # the row it names is gone by the insert
    response = roomy.post(f"/pools/{uuid}/stdout/7")
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "pool_not_found"
    monkeypatch.setattr(service, "get_pool", found)
    assert roomy.post(f"/pools/{uuid}/stdout/7").status_code == 200  # the request lost nothing
