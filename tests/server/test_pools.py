"""Pools on the API with a fake executor: slots held, preparation, states, elastic resizing."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qcompute.server.bootstrap import client_config_path, read_token

from .conftest import Cluster, make_cluster, wait_for


@pytest.fixture
def big(tmp_path):
    """A cluster with 4 executor slots and a fast scheduler tick."""
    settings, app, storage, holder = make_cluster(tmp_path, capacity=4,
                                                  scheduler_tick_seconds=0.05)
    with TestClient(app) as client:
        yield Cluster(client, holder["executor"], storage, read_token(client_config_path(settings)))


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


def test_a_static_pool_prepares_each_slot_then_runs_its_tasks(big):
    uuid = make_pool(big, preparationTask={"commandLine": "echo prep $SLOT_ID"})
    preps = big.wait_dispatched(uuid, 2)
    assert [k.instance_id for k in preps] == [0, 1]
    assert big.executor.specs[preps[0]].command == "echo prep $SLOT_ID"
    assert pool(big, uuid)["state"] == "FullyDispatched"
    task = big.submit("echo $POOL_C", poolUuid=uuid, profile=None, instanceCount=3)
    assert big.executor.keys_of(task) == []  # nothing runs before the preparation
    big.executor.run(preps[0], stdout="prepared 0\n")
    wait_pool(big, uuid, "PartiallyExecuting")
    big.executor.run(preps[1])
    doc = wait_pool(big, uuid, "FullyExecuting")
    assert doc["totalSlotCapacity"] == 2 and doc["creationDate"].endswith("Z")
    keys = big.wait_dispatched(task, 2)
    assert len(big.executor.keys_of(task)) == 2  # the pool's 2 slots, not the cluster's 4
    assert big.executor.specs[keys[0]].env["POOL_C"] == "from-pool"
    assert big.task(task)["poolUuid"] == uuid
    assert "prepared 0" in big.get(f"/pools/{uuid}/stdout").text
    assert big.post(f"/pools/{uuid}/stdout/0").text == "prepared 0\n"
    for key in keys:
        big.executor.run(key)
    last = big.wait_dispatched(task, 1)
    big.executor.run(last[0])
    big.wait_state(task, "Success")


def test_a_pool_holds_its_slots_away_from_other_tasks(big):
    uuid = make_pool(big, instanceCount=3)
    wait_pool(big, uuid, "FullyExecuting")  # no preparation: slots are ready at once
    other = big.submit("echo", instanceCount=3)
    big.wait_dispatched(other, 1)
    assert len(big.executor.keys_of(other)) == 1  # 4 slots - 3 held


def test_closing_waits_for_the_tasks_then_gives_the_slots_back(big):
    uuid = make_pool(big, instanceCount=3)
    wait_pool(big, uuid, "FullyExecuting")
    task = big.submit("sleep", poolUuid=uuid, profile=None)
    key = big.wait_dispatched(task, 1)[0]
    assert big.post(f"/pools/{uuid}/close").status_code == 200
    assert wait_pool(big, uuid, "Closing")
    refused = big.post("/tasks", json={"name": "late", "poolUuid": uuid,
                                       "constants": [{"key": "DOCKER_CMD", "value": "x"}]})
    assert refused.status_code == 400 and "takes no new tasks" in refused.json()["message"]
    big.executor.run(key)
    doc = wait_pool(big, uuid, "Closed")
    assert doc["endDate"] and doc["totalSlotCapacity"] == 0
    other = big.submit("echo", instanceCount=4)
    assert len(big.wait_dispatched(other, 4)) == 4
    assert big.post(f"/pools/{uuid}/close").status_code == 403


def test_a_failed_preparation_fails_the_pool_and_cancels_its_tasks(big):
    uuid = make_pool(big, instanceCount=1, preparationTask={"commandLine": "exit 3"})
    prep = big.wait_dispatched(uuid, 1)[0]
    task = big.submit("echo", poolUuid=uuid, profile=None)
    big.executor.run(prep, exit_code=3)
    doc = wait_pool(big, uuid, "Failure")
    assert "slot 0" in doc["errors"][0]["message"] and "code 3" in doc["errors"][0]["message"]
    cancelled = big.wait_state(task, "Cancelled")
    assert f"pool {uuid} failed" in cancelled["errors"][0]["message"]


def test_deleting_a_pool_cancels_its_tasks_then_removes_it(big):
    uuid = make_pool(big, instanceCount=1)
    wait_pool(big, uuid, "FullyExecuting")
    task = big.submit("sleep", poolUuid=uuid, profile=None)
    big.wait_dispatched(task, 1)
    assert big.delete(f"/pools/{uuid}").status_code == 200
    big.wait_state(task, "Cancelled")
    wait_for(lambda: big.get(f"/pools/{uuid}").status_code == 404)
    assert big.task(task)["poolUuid"] == uuid  # the task keeps what it was submitted with


def test_an_elastic_pool_grows_with_the_queue_and_shrinks_when_idle(big):
    uuid = make_pool(big, instanceCount=None, elasticProperty={
        "isElastic": True, "minTotalSlots": 0, "maxTotalSlots": 3, "minIdleSlots": 0,
        "resizePeriod": 0, "rampResizeFactor": 1, "minIdleTimeSeconds": 0})
    assert wait_pool(big, uuid, "FullyExecuting")["totalSlotCapacity"] == 0
    task = big.submit("echo", poolUuid=uuid, profile=None, instanceCount=5)
    keys = big.wait_dispatched(task, 3)
    doc = pool(big, uuid)
    assert doc["totalSlotCapacity"] == 3 and doc["slots"]["busy"] == 3
    assert doc["queuedOrRunningTaskInstancesCount"] == 5
    for key in keys:
        big.executor.run(key)
    for key in big.wait_dispatched(task, 2):
        big.executor.run(key)
    big.wait_state(task, "Success")
    wait_for(lambda: pool(big, uuid)["totalSlotCapacity"] == 0)


def test_elastic_settings_changed_with_put_take_effect(big):
    uuid = make_pool(big, instanceCount=None, elasticProperty={
        "isElastic": True, "minTotalSlots": 1, "maxTotalSlots": 1, "resizePeriod": 0})
    wait_for(lambda: pool(big, uuid)["totalSlotCapacity"] == 1)
    doc = pool(big, uuid)
    doc["elasticProperty"].update(minTotalSlots=2, maxTotalSlots=4)
    response = big.put(f"/pools/{uuid}", json=doc)  # the whole document, as the SDK sends it
    assert response.status_code == 200, response.text
    wait_for(lambda: pool(big, uuid)["totalSlotCapacity"] == 2)
    doc["profile"] = "other"
    fixed = big.put(f"/pools/{uuid}", json=doc)
    assert fixed.status_code == 400 and "profile cannot change" in fixed.json()["message"]


def test_a_slow_ramp_grows_by_a_share_of_the_gap_per_period(big):
    uuid = make_pool(big, instanceCount=None, elasticProperty={
        "isElastic": True, "minTotalSlots": 0, "maxTotalSlots": 4, "resizePeriod": 3600,
        "rampResizeFactor": 0.5})
    task = big.submit("echo", poolUuid=uuid, profile=None, instanceCount=4)
    big.wait_dispatched(task, 2)
    assert pool(big, uuid)["totalSlotCapacity"] == 2  # half the gap, then wait a period


@pytest.mark.parametrize("doc, words", [
    ({"instanceCount": 5}, "this cluster has 4"),
    ({"profile": "nope"}, "unknown profile"),
    ({"elasticProperty": {"isElastic": True, "minTotalSlots": 3, "maxTotalSlots": 1}},
     "above maxTotalSlots"),
    ({"elasticProperty": {"isElastic": True, "rampResizeFactor": 2}}, "rampResizeFactor"),
    ({"completionTimeToLive": "soon"}, "time span"),
    ({"advancedResourceBuckets": [{"bucketName": "A"}]}, "bucket name"),
])
def test_bad_pools_are_refused_with_the_reason(big, doc, words):
    response = big.post("/pools", json={"name": "p", "profile": "docker-batch", **doc})
    assert response.status_code == 400 and words in response.json()["message"], response.text
    assert big.get("/pools").json() == []


def test_a_task_in_a_pool_takes_the_pool_profile(big):
    uuid = make_pool(big)
    response = big.post("/tasks", json={"name": "t", "poolUuid": uuid, "profile": "other",
                                        "constants": [{"key": "DOCKER_CMD", "value": "x"}]})
    assert response.status_code == 400 and "pool's profile" in response.json()["message"]


def test_pools_are_listed_and_paged_with_tag_filters(big):
    first = make_pool(big, instanceCount=1, tags=["a"])
    make_pool(big, instanceCount=1, tags=["b"])
    page = big.post("/pools/paginate", json={"filter": {"operator": "Equal", "field": "Tags",
                                                        "value": "a"}}).json()
    assert [p["uuid"] for p in page["data"]] == [first] and page["isTruncated"] is False
    summaries = big.post("/pools/summaries/paginate", json={"maximumResults": 1}).json()
    assert len(summaries["data"]) == 1 and summaries["nextToken"]
    assert len(big.get("/pools/summaries").json()) == 2


def test_deleting_a_preparing_pool_stops_its_preparation(big):
    uuid = make_pool(big, instanceCount=1, preparationTask={"commandLine": "sleep 100"})
    prep = big.wait_dispatched(uuid, 1)[0]
    assert big.delete(f"/pools/{uuid}").status_code == 200
    wait_for(lambda: prep in big.executor.cancelled)
    wait_for(lambda: big.get(f"/pools/{uuid}").status_code == 404)
    other = big.submit("echo", instanceCount=4)
    assert len(big.wait_dispatched(other, 4)) == 4  # the slot came back


def test_pool_secrets_reach_its_preparation_and_its_tasks(big):
    for key, value in (("pool/token", "pool-secret-1"), ("task/token", "task-secret-2")):
        assert big.put(f"/secrets-manager/data/{key}", json={"Value": value}).status_code < 300
    uuid = make_pool(big, instanceCount=1, preparationTask={"commandLine": "echo prep"},
                     secretsAccessRights={"bySecret": [{"key": "pool/token"}]})
    prep = big.wait_dispatched(uuid, 1)[0]
    assert big.executor.specs[prep].env["QARNOT_SECRET__POOL_TOKEN"] == "pool-secret-1"
    big.executor.run(prep, stdout="leaked pool-secret-1\n")
    assert "pool-secret-1" not in big.get(f"/pools/{uuid}/stdout").text
    task = big.submit("echo", poolUuid=uuid, profile=None,
                      secretsAccessRights={"byPrefix": [{"prefix": "task/"}]})
    env = big.executor.specs[big.wait_dispatched(task, 1)[0]].env
    assert env["QARNOT_SECRET__POOL_TOKEN"] == "pool-secret-1"
    assert env["QARNOT_SECRET__TASK_TOKEN"] == "task-secret-2"
    assert big.task(task)["waitForPoolResourcesSynchronization"] is False
