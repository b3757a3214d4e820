"""Task.explain() and Task.rerun_failed() against a mocked API."""
from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from qcompute import (
    Connection,
    Explanation,
    MissingTaskException,
    NotFoundError,
    Reason,
    ResourceStateError,
    TaskState,
)

from .helpers import API, TASK_UUID, task_doc

TASK_URL = f"{API}/tasks/{TASK_UUID}"
NEW_UUID = "22222222-2222-4222-8222-222222222222"


def submitted(api: responses.RequestsMock, conn: Connection, **doc: Any):
    api.add("GET", TASK_URL, json=task_doc(**doc))
    task = conn.retrieve_task(TASK_UUID)
    api.calls.reset()
    return task


EXPLAINED = {"uuid": TASK_UUID, "state": "Submitted", "instances": {"Queued": 2}, "reasons": [
    {"code": "capacity", "message": "waiting for a slot: 2 of 2 executor slots are busy",
     "ahead": 3, "busySlots": 2, "totalSlots": 2, "queued": 2},
    {"code": "queue_timeout", "message": "instances not started by ... are cancelled",
     "deadline": "2026-12-05T22:00:00.000000Z", "secondsLeft": 59.5,
     "maxTimeQueueSeconds": 60}]}


def test_explain_reads_the_route_into_reasons(api: responses.RequestsMock,
                                              conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("GET", f"{TASK_URL}/explain", json=EXPLAINED)
    found = task.explain()
    assert isinstance(found, Explanation)
    assert found.uuid == TASK_UUID and found.state is TaskState.SUBMITTED
    assert found.instances == {"Queued": 2}
    assert found.codes == ["capacity", "queue_timeout"]
    assert found.reasons[0] == Reason("capacity", EXPLAINED["reasons"][0]["message"],
                                      {"ahead": 3, "busySlots": 2, "totalSlots": 2, "queued": 2})
    assert str(found) == (f"task {TASK_UUID} is Submitted\n"
                          "- waiting for a slot: 2 of 2 executor slots are busy\n"
                          "- instances not started by ... are cancelled")
    assert [c.request.method for c in api.calls] == ["GET"]


def test_explain_tells_a_missing_task_from_a_server_without_the_route(
        api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("GET", f"{TASK_URL}/explain", status=404,
            json={"message": f"task {TASK_UUID} not found", "code": "task_not_found"})
    with pytest.raises(MissingTaskException, match="not found"):
        task.explain()
    api.add("GET", f"{TASK_URL}/explain", status=404, body="Not Found")
    with pytest.raises(NotFoundError, match="needs a qcompute cluster") as raised:
        task.explain()
    assert not isinstance(raised.value, MissingTaskException)


def test_explain_and_rerun_need_a_submitted_task(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    for action in (task.explain, task.rerun_failed):
        with pytest.raises(ResourceStateError, match="not submitted"):
            action()


FINISHED = dict(
    state="Failure", instanceCount=10, tags=["sweep"], labels={"team": "x"},
    constants=[{"key": "DOCKER_CMD", "value": "run $INSTANCE_ID"}],
    advancedResourceBuckets=[{"bucketName": "in"}], resultBucket="out",
    resultsWhitelist=r".*\.txt", retrySettings={"maxTotalRetries": 1, "maxPerInstanceRetries": 1},
    maxTimeQueueSeconds=600, jobUuid="33333333-3333-4333-8333-333333333333",
    dependencies={"dependsOn": ["44444444-4444-4444-8444-444444444444"]},
    status={"failedRange": "3,7-9", "instanceCount": 10})


def test_rerun_failed_submits_the_same_definition_over_the_failed_range(
        api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn, **FINISHED)
    api.add("GET", TASK_URL, json=task_doc(**FINISHED))
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": NEW_UUID})
    api.add("GET", f"{API}/tasks/{NEW_UUID}", json=task_doc(uuid=NEW_UUID, instanceCount=4))
    rerun = task.rerun_failed()
    assert rerun.uuid == NEW_UUID and rerun is not task
    sent = json.loads(api.calls[1].request.body)
    assert sent["name"] == "hello (rerun of failed)"
    assert sent["advancedRanges"] == "3,7-9" and "instanceCount" not in sent
    assert sent["profile"] == "docker-batch" and sent["poolUuid"] is None
    assert sent["labels"] == {"team": "x", "qcompute.rerunOf": TASK_UUID}
    assert [b["bucketName"] for b in sent["advancedResourceBuckets"]] == ["in"]
    for key in ("constants", "tags", "resultBucket",
                "resultsWhitelist", "retrySettings", "maxTimeQueueSeconds"):
        assert sent[key] == FINISHED[key], key
    assert sent["jobUuid"] is None and "dependencies" not in sent and "shortname" not in sent


def test_rerun_failed_in_a_pool_keeps_the_pool_without_a_profile(
        api: responses.RequestsMock, conn: Connection) -> None:
    pool = "55555555-5555-4555-8555-555555555555"
    doc = {**FINISHED, "poolUuid": pool}
    task = submitted(api, conn, **doc)
    api.add("GET", TASK_URL, json=task_doc(**doc))
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": NEW_UUID})
    api.add("GET", f"{API}/tasks/{NEW_UUID}", json=task_doc(uuid=NEW_UUID))
    task.rerun_failed()
    sent = json.loads(api.calls[1].request.body)
    assert sent["poolUuid"] == pool and sent["profile"] is None


@pytest.mark.parametrize("doc, match", [
    ({"state": "FullyExecuting"}, "needs a finished task"),
    ({"state": "Success", "status": {"failedRange": ""}}, "no failed instance"),
    ({"state": "Cancelled", "status": None}, "no failed instance"),
])
def test_rerun_failed_refuses_what_it_cannot_rerun(api: responses.RequestsMock,
                                                   conn: Connection, doc, match) -> None:
    task = submitted(api, conn, **doc)
    api.add("GET", TASK_URL, json=task_doc(**doc))
    with pytest.raises(ResourceStateError, match=match):
        task.rerun_failed()
    assert [c.request.method for c in api.calls] == ["GET"]  # a refresh, and no submit
