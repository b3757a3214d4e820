"""Snapshots and resource updates through the API, with the fake executor: statuses, the
requests forwarded to running instances, and the 400/403/404 answers."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qcompute.server.bootstrap import client_config_path, read_token
from qcompute.server.db.models import Snapshot
from qcompute.server.executors.base import SnapshotRequest

from .conftest import make_cluster, wait_for

STATUSES = {"Triggered", "InProgress", "Success", "Failure"}


def snapshot_doc(cluster, uuid: str, snapshot_id: str) -> dict:
    response = cluster.get(f"/tasks/{uuid}/snapshot/{snapshot_id}")
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["status"] in STATUSES  # anything else makes the official SDK wait forever
    return doc


def wait_status(cluster, uuid: str, snapshot_id: str, status: str) -> dict:
    return wait_for(lambda: (d := snapshot_doc(cluster, uuid, snapshot_id))["status"] == status
                    and d)


def running_task(cluster, count: int = 2, **fields) -> tuple[str, list]:
    fields.setdefault("resultBucket", "results-bucket")
    uuid = cluster.submit("sleep 100", instanceCount=count, **fields)
    keys = cluster.wait_dispatched(uuid, count)
    for key in keys:
        cluster.executor.start(key)
    cluster.wait_state(uuid, "FullyExecuting")
    return uuid, keys


def test_instant_snapshot_goes_to_every_running_instance_and_succeeds(cluster):
    uuid, keys = running_task(cluster, snapshotWhitelist=r"\.txt$", resultsBlacklist="tmp")
    response = cluster.post(f"/tasks/{uuid}/snapshot", json={"bucketPrefix": "snap/"})
    assert response.status_code == 200, response.text
    snapshot_id = response.json()["id"]
    doc = wait_status(cluster, uuid, snapshot_id, "InProgress")
    assert doc["taskUuid"] == uuid and doc["id"] == snapshot_id
    assert doc["snapshotConfig"] == {"whitelist": r"\.txt$", "blacklist": "tmp",
                                     "bucket": "results-bucket", "bucketPrefix": "snap/"}
    assert doc["triggerDate"].endswith("Z")
    sent = wait_for(lambda: len(cluster.executor.snapshots) == 2 and cluster.executor.snapshots)
    assert sorted((k for k, _ in sent), key=str) == sorted(keys, key=str)
    assert sent[0][1] == SnapshotRequest(snapshot_id, "results-bucket", "snap/", r"\.txt$", "tmp")

    cluster.executor.snapshot_done(keys[0], snapshot_id, keys=("snap/a.txt",), size=5)
    assert wait_for(lambda: snapshot_doc(cluster, uuid, snapshot_id)["sizeToUpload"] == 5)
    assert snapshot_doc(cluster, uuid, snapshot_id)["status"] == "InProgress"  # one to go
    cluster.executor.snapshot_done(keys[1], snapshot_id, keys=("snap/b.txt",), size=7)
    doc = wait_status(cluster, uuid, snapshot_id, "Success")
    assert (doc["sizeToUpload"], doc["transferredSize"]) == (12, 12)
    info = cluster.task(uuid)["status"]["runningInstancesInfo"]
    assert info["snapshotResults"] == ["snap/a.txt", "snap/b.txt"]


def test_one_failing_instance_fails_the_snapshot(cluster):
    uuid, keys = running_task(cluster)
    snapshot_id = cluster.post(f"/tasks/{uuid}/snapshot", json={}).json()["id"]
    wait_for(lambda: len(cluster.executor.snapshots) == 2)
    cluster.executor.snapshot_done(keys[0], snapshot_id, ok=False, error="access denied")
    doc = wait_status(cluster, uuid, snapshot_id, "Failure")
    assert "access denied" in doc["error"]
    cluster.executor.snapshot_done(keys[1], snapshot_id)  # a later success does not undo it
    wait_for(lambda: snapshot_doc(cluster, uuid, snapshot_id)["transferredSize"] == 10)
    assert snapshot_doc(cluster, uuid, snapshot_id)["status"] == "Failure"


def test_an_instance_ending_before_it_reports_fails_the_snapshot(cluster):
    uuid, keys = running_task(cluster, count=1)
    snapshot_id = cluster.post(f"/tasks/{uuid}/snapshot", json={}).json()["id"]
    wait_for(lambda: cluster.executor.snapshots)
    cluster.executor.run(keys[0])  # Finished, no SnapshotDone
    doc = wait_status(cluster, uuid, snapshot_id, "Failure")
    assert "ended before" in doc["error"]


def test_snapshot_of_a_task_that_is_not_running_is_refused(cluster):
    blockers = [running_task(cluster, count=1)[1][0] for _ in range(2)]  # the executor is full
    queued = cluster.submit("sleep 1", resultBucket="results-bucket")
    response = cluster.post(f"/tasks/{queued}/snapshot", json={})
    assert response.status_code == 403
    assert response.json()["code"] == "task_not_running"
    assert "not running" in response.json()["message"]

    finished = blockers[0].task_uuid
    cluster.executor.run(blockers[0])
    cluster.wait_state(finished, "Success")
    response = cluster.post(f"/tasks/{finished}/snapshot", json={})
    assert response.status_code == 403 and "not running" in response.json()["message"]
    response = cluster.post(f"/tasks/{finished}/snapshot/periodic", json={"interval": 5})
    assert response.status_code == 403 and response.json()["code"] == "task_not_running"


@pytest.mark.parametrize("body", [{"interval": 0}, {"interval": -3}, {"interval": "5"},
                                  {"interval": 1.5}, {"interval": True}, {}, None, [5],
                                  {"interval": 5, "whitelist": "("},
                                  {"interval": 5, "bucket": "not..a-bucket"}])
def test_periodic_snapshot_needs_a_positive_integer_interval(cluster, body):
    uuid = cluster.submit("sleep 1", resultBucket="results-bucket")
    response = cluster.post(f"/tasks/{uuid}/snapshot/periodic", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"message", "code"}


def test_a_snapshot_needs_a_bucket(cluster):
    uuid, _ = running_task(cluster, count=1, resultBucket=None)
    for path, body in [("snapshot", {}), ("snapshot/periodic", {"interval": 5})]:
        response = cluster.post(f"/tasks/{uuid}/{path}", json=body)
        assert response.status_code == 400 and response.json()["code"] == "no_snapshot_bucket"
    response = cluster.post(f"/tasks/{uuid}/snapshot", json={"bucket": "elsewhere"})
    assert response.status_code == 200


def test_the_bucket_must_respect_the_users_prefix(cluster):
    alice = cluster.post("/admin/users", json={"email": "alice@example.com"}).json()
    prefix, headers = alice["bucketPrefix"], {"Authorization": alice["token"]}
    doc = {"name": "t", "profile": "docker-batch", "resultBucket": f"{prefix}out",
           "constants": [{"key": "DOCKER_CMD", "value": "sleep 100"}]}
    uuid = cluster.client.post("/tasks", json=doc, headers=headers).json()["uuid"]
    [key] = cluster.wait_dispatched(uuid, 1)
    cluster.executor.start(key)
    wait_for(lambda: cluster.client.get(f"/tasks/{uuid}", headers=headers).json()["state"]
             == "FullyExecuting")
    response = cluster.client.post(f"/tasks/{uuid}/snapshot", json={"bucket": "someone-else"},
                                   headers=headers)
    assert response.status_code == 403 and response.json()["code"] == "bucket_forbidden"
    response = cluster.client.post(f"/tasks/{uuid}/snapshot", json={}, headers=headers)
    assert response.status_code == 200  # the default: the task's own result bucket
    assert cluster.get(f"/tasks/{uuid}/snapshot/{response.json()['id']}").status_code == 404


def test_unknown_task_or_snapshot_is_404(cluster):
    uuid, _ = running_task(cluster, count=1)
    assert cluster.get(f"/tasks/{uuid}/snapshot/nope").status_code == 404
    assert cluster.get("/tasks/nope/snapshot/nope").status_code == 404
    assert cluster.post("/tasks/nope/snapshot", json={}).status_code == 404
    assert cluster.post("/tasks/nope/snapshot/periodic", json={"interval": 5}).status_code == 404
    assert cluster.client.patch("/tasks/nope", headers=cluster.headers).status_code == 404


def test_periodic_snapshot_before_start_goes_into_the_spec(cluster):
    blockers = [running_task(cluster, count=1)[1][0] for _ in range(2)]
    uuid = cluster.submit("sleep 1", resultBucket="results-bucket", snapshotBlacklist=r"\.log$")
    response = cluster.post(f"/tasks/{uuid}/snapshot/periodic",
                            json={"interval": 30, "whitelist": None, "bucketPrefix": "p/"})
    assert response.status_code == 200, response.text
    snapshot_id = response.json()["id"]
    assert cluster.task(uuid)["snapshotInterval"] == 30
    assert snapshot_doc(cluster, uuid, snapshot_id)["status"] == "Triggered"
    cluster.executor.run(blockers[0])
    [key] = cluster.wait_dispatched(uuid, 1)
    spec = cluster.executor.specs[key]
    assert spec.snapshot_interval_sec == 30
    assert spec.periodic_snapshot == SnapshotRequest(snapshot_id, "results-bucket", "p/", None,
                                                     r"\.log$")
    cluster.executor.start(key)
    cluster.executor.snapshot_done(key, snapshot_id, keys=("p/x",))  # one periodic round
    wait_status(cluster, uuid, snapshot_id, "Success")
    cluster.executor.snapshot_done(key, snapshot_id, ok=False, error="boom")  # the next one
    assert "boom" in wait_status(cluster, uuid, snapshot_id, "Failure")["error"]
    assert cluster.executor.periodic == []  # it started with it: no control message needed


def test_periodic_snapshot_reaches_running_instances_and_can_change(cluster):
    uuid, keys = running_task(cluster)
    first = cluster.post(f"/tasks/{uuid}/snapshot/periodic", json={"interval": 10}).json()["id"]
    sent = wait_for(lambda: len(cluster.executor.periodic) == 2 and cluster.executor.periodic)
    assert sorted((k for k, _, _ in sent), key=str) == sorted(keys, key=str)
    assert {(i, r.snapshot_id, r.bucket) for _, i, r in sent} == {(10, first, "results-bucket")}
    again = cluster.post(f"/tasks/{uuid}/snapshot/periodic", json={"interval": 2}).json()["id"]
    assert again == first  # one periodic snapshot per task, replaced
    wait_for(lambda: len(cluster.executor.periodic) == 4)
    assert {i for _, i, _ in cluster.executor.periodic[2:]} == {2}
    assert cluster.task(uuid)["snapshotInterval"] == 2
    with cluster.client.app.state.ctx.sessions() as session:
        assert len(session.scalars(select(Snapshot)).all()) == 1


def test_patch_refreshes_running_instances(cluster):
    uuid, keys = running_task(cluster)
    response = cluster.client.patch(f"/tasks/{uuid}", headers=cluster.headers)
    assert response.status_code == 200, response.text
    assert response.json()["uuid"] == uuid and response.json()["resourcesVersion"] == 1
    refreshed = wait_for(lambda: len(cluster.executor.refreshed) == 2
                         and cluster.executor.refreshed)
    assert sorted(refreshed, key=str) == sorted(keys, key=str)
    assert cluster.client.patch(f"/tasks/{uuid}", headers=cluster.headers).json()[
        "resourcesVersion"] == 2
    for key in keys:
        cluster.executor.run(key)
    cluster.wait_state(uuid, "Success")
    response = cluster.client.patch(f"/tasks/{uuid}", headers=cluster.headers)
    assert response.status_code == 403 and "not running" in response.json()["message"]


def test_patch_of_a_queued_task_sends_nothing(cluster):
    blockers = [running_task(cluster, count=1)[1][0] for _ in range(2)]
    queued = cluster.submit("sleep 1")
    assert cluster.client.patch(f"/tasks/{queued}", headers=cluster.headers).status_code == 200
    # events are applied in order: once the running task's refresh is out, the queued one's
    # PATCH was handled too
    cluster.client.patch(f"/tasks/{blockers[0].task_uuid}", headers=cluster.headers)
    assert wait_for(lambda: cluster.executor.refreshed) == [blockers[0]]


def test_snapshots_left_open_fail_when_the_server_restarts(tmp_path, database_url):
    settings, app, _, holder = make_cluster(tmp_path)
    with TestClient(app) as client:
        headers = {"Authorization": read_token(client_config_path(settings))}
        doc = {"name": "t", "profile": "docker-batch", "resultBucket": "results-bucket",
               "constants": [{"key": "DOCKER_CMD", "value": "sleep 9"}]}
        uuid = client.post("/tasks", json=doc, headers=headers).json()["uuid"]
        [key] = wait_for(lambda: holder["executor"].keys_of(uuid))
        holder["executor"].start(key)
        wait_for(lambda: client.get(f"/tasks/{uuid}", headers=headers).json()["state"]
                 == "FullyExecuting")
        snapshot_id = client.post(f"/tasks/{uuid}/snapshot", json={}, headers=headers).json()["id"]
        wait_for(lambda: holder["executor"].snapshots)
    _, app2, _, _ = make_cluster(tmp_path)
    with TestClient(app2) as client:
        doc = client.get(f"/tasks/{uuid}/snapshot/{snapshot_id}", headers=headers).json()
        assert doc["status"] == "Failure" and "restarted" in doc["error"]
