"""The task API through TestClient: validation, lifecycle, output, paging, idempotency."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qcompute.server.bootstrap import client_config_path, read_token

from .conftest import make_cluster, wait_for


def test_settings_info_profiles(cluster):
    assert cluster.client.get("/settings").json() == {
        "storage": "http://127.0.0.1:9", "taskWaitMaxSeconds": 60.0, "sandboxed": True,
        "isolation": "fake executor (tests)"}
    info = cluster.get("/info").json()
    assert info["email"] == "owner@qcompute.local" and info["bucketPrefix"] == ""
    assert cluster.get("/profiles").json() == ["docker-batch"]
    profile = cluster.get("/profiles/docker-batch").json()
    assert {"name": "DOCKER_CMD", "value": ""} in profile["constants"]
    missing = cluster.get("/profiles/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["message"]
    assert cluster.client.get("/health").json()["status"] == "ok"
    assert "/tasks" in cluster.client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("token", [None, "wrong"])
def test_bad_token_is_401_with_message(cluster, token):
    headers = {"Authorization": token} if token else {}
    response = cluster.client.get("/tasks/x", headers=headers)
    assert response.status_code == 401
    assert "token" in response.json()["message"]


@pytest.mark.parametrize("doc, status, words", [
    ({"profile": "docker-batch"}, 400, "name"),
    ({"name": "t", "profile": "nope", "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400,
     "unknown profile 'nope'"),
    ({"name": "t", "profile": "docker-batch"}, 400, "DOCKER_CMD is empty"),
    ({"name": "t", "profile": "docker-batch", "instanceCount": 0,
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "instanceCount"),
    ({"name": "t", "profile": "docker-batch", "instanceCount": -1,
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "instanceCount"),
    ({"name": "t", "profile": "docker-batch", "advancedRanges": "3-1",
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "advancedRanges"),
    ({"name": "t", "profile": "docker-batch", "resultBucket": "-x-",
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "'-x-' is not a valid bucket"),
    ({"name": "t", "profile": "docker-batch", "resourceBuckets": ["meshroomIn", "bk"],
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "'bk' is not a valid bucket"),
    ({"name": "t", "profile": "docker-batch", "advancedResourceBuckets": [{"bucketName": "a..b"}],
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "'a..b' is not a valid bucket"),
    ({"name": "t", "profile": "docker-batch", "resultsWhitelist": "(",
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "regular expression"),
    ({"name": "t", "profile": "docker-batch", "poolUuid": "p",
      "constants": [{"key": "DOCKER_CMD", "value": "x"}]}, 400, "pool p not found"),
    ([1], 200, None),
    ("text", 400, "JSON object"),
])
def test_bad_submissions_are_named_and_store_nothing(cluster, doc, status, words):
    response = cluster.post("/tasks", json=doc)
    assert response.status_code == status, response.text
    if words:
        assert words in response.json()["message"]
        assert response.json()["code"]
    else:
        assert response.json()[0]["statusCode"] == 400
    assert cluster.get("/tasks").json() == []


def test_qarnot_bucket_names_reach_the_runner(cluster):
    """Upper case and '_' are Qarnot bucket names (its samples use them): accepted as is."""
    uuid = cluster.submit("true", resourceBuckets=["meshroomIn"], resultBucket="vina_Out-1",
                          advancedResourceBuckets=[{"bucketName": "etudepoutre2D-in"}])
    spec = cluster.executor.specs[cluster.wait_dispatched(uuid, 1)[0]]
    assert [r.bucket for r in spec.resources] == ["etudepoutre2D-in", "meshroomIn"]
    assert spec.result_bucket == "vina_Out-1"
    assert cluster.storage.prepared == ["vina_Out-1"]


def test_a_result_bucket_the_storage_cannot_prepare_is_a_503(cluster):
    cluster.storage.down = True
    doc = {"name": "t", "profile": "docker-batch", "resultBucket": "meshroomOut",
           "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    response = cluster.post("/tasks", json=doc)
    assert response.status_code == 503 and response.json()["code"] == "storage_unavailable"
    assert "'meshroomOut'" in response.json()["message"]
    assert cluster.post("/tasks", json=[doc]).json()[0]["statusCode"] == 503  # bulk: per task
    assert cluster.get("/tasks").json() == []


def test_not_json_is_400(cluster):
    response = cluster.post("/tasks", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["message"]


def test_lifecycle_success_with_output(cluster):
    uuid = cluster.submit("echo hi", instanceCount=3, tags=["a"])
    keys = cluster.wait_dispatched(uuid, 2)  # capacity 2: the third waits
    task = cluster.task(uuid)
    assert task["state"] == "PartiallyDispatched" and task["creationDate"].endswith("Z")
    spec = cluster.executor.specs[keys[0]]
    assert spec.command == "echo hi"
    assert spec.env["INSTANCE_ID"] == "0" and spec.env["INSTANCE_COUNT"] == "3"
    assert spec.env["QRANK"] == "0" and spec.env["QSIZE"] == "3" and spec.env["FRAME_ID"] == "0"
    cluster.executor.run(keys[0], stdout="hello from 0\n")
    third = wait_for(lambda: len(cluster.executor.keys_of(uuid)) == 2
                     and cluster.executor.keys_of(uuid))
    for key in third:
        cluster.executor.run(key, stdout=f"hello from {key.instance_id}\n")
    task = cluster.wait_state(uuid, "Success")
    assert task["progress"] == 100.0 and task["status"]["succeededRange"] == "0-2"
    assert [c["instanceId"] for c in task["completedInstances"]] == [0, 1, 2]
    assert task["completedInstances"][0]["exitCode"] == 0
    assert task["completedInstances"][0]["executionAttemptCount"] == 1
    assert task["status"]["executionTimeByCpuModel"] == [] and task["errors"] == []
    assert task["endDate"] and task["previousState"]
    stdout = cluster.get(f"/tasks/{uuid}/stdout").text
    assert sorted(stdout.splitlines()) == [f"hello from {i}" for i in range(3)]
    assert cluster.get(f"/tasks/{uuid}/stdout/1").text == "hello from 1\n"
    cluster.assert_counts_match_instances(uuid)
    summary = cluster.get("/tasks/summaries").json()[0]
    assert summary["executionTime"] == "00:00:01"  # 3 instances of 0.5 s each
    assert summary["progress"] == 100.0 and summary["state"] == "Success"
    assert cluster.get(f"/tasks/{uuid}/stdout/9").status_code == 404


def test_failure_names_exit_code(cluster):
    uuid = cluster.submit("exit 3")
    key = cluster.wait_dispatched(uuid, 1)[0]
    cluster.executor.run(key, exit_code=3)
    task = cluster.wait_state(uuid, "Failure")
    assert task["completedInstances"][0]["exitCode"] == 3
    assert "exited with code 3" in task["errors"][0]["message"]
    assert task["status"]["failedRange"] == "0"


def test_infrastructure_error_requeues_then_fails(cluster):
    uuid = cluster.submit("true")
    for attempt in (1, 2, 3):  # max_infra_retries = 2: three tries in all
        key = wait_for(lambda: (k := cluster.executor.keys_of(uuid)) and k[0].attempt == attempt
                       and k[0])
        cluster.executor.run(key, exit_code=None, error="bucket vanished")
    task = cluster.wait_state(uuid, "Failure")
    assert "bucket vanished" in task["errors"][0]["message"]
    cluster.assert_counts_match_instances(uuid)


def test_advanced_range(cluster):
    uuid = cluster.submit("true", advancedRanges="115-116,200", instanceCount=0)
    keys = cluster.wait_dispatched(uuid, 2)
    assert [k.instance_id for k in keys] == [115, 116]
    assert cluster.executor.specs[keys[1]].env["QRANK"] == "1"
    assert cluster.task(uuid)["instanceCount"] == 3


def test_abort(cluster):
    uuid = cluster.submit("sleep 100", instanceCount=3)
    cluster.wait_dispatched(uuid, 2)
    response = cluster.post(f"/tasks/{uuid}/abort")
    assert response.status_code == 200
    task = cluster.wait_state(uuid, "Cancelled")
    assert len(cluster.executor.cancelled) == 2
    assert {c["state"] for c in task["completedInstances"]} == {"Cancelled"}
    cluster.assert_counts_match_instances(uuid)
    again = cluster.post(f"/tasks/{uuid}/abort")
    assert again.status_code == 403 and "Cancelled" in again.json()["message"]


def test_fresh_stdout_cursor(cluster):
    uuid = cluster.submit("x")
    key = cluster.wait_dispatched(uuid, 1)[0]
    cluster.executor.on_event(__import__("qcompute.server.executors.base", fromlist=["Output"])
                              .Output(key, "stdout", "one\n"))
    assert cluster.post(f"/tasks/{uuid}/stdout").text == "one\n"
    assert cluster.post(f"/tasks/{uuid}/stdout").text == ""
    cluster.executor.run(key, stdout="two\n")
    assert cluster.post(f"/tasks/{uuid}/stdout").text == "two\n"
    assert cluster.get(f"/tasks/{uuid}/stdout").text == "one\ntwo\n"
    assert cluster.post(f"/tasks/{uuid}/stdout/0").text == "one\ntwo\n"  # its own cursor


def test_idempotency_key_replays_and_creates_once(cluster):
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    headers = {"Idempotency-Key": "k-1"}
    first = cluster.post("/tasks", json=doc, headers=headers)
    second = cluster.post("/tasks", json=doc, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(cluster.get("/tasks").json()) == 1
    other = cluster.post("/tasks", json={**doc, "name": "u"}, headers=headers)
    assert other.status_code == 409 and "different request" in other.json()["message"]
    too_long = cluster.post("/tasks", json=doc, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400 and "255" in too_long.json()["message"]
    assert len(cluster.get("/tasks").json()) == 1


def test_bulk_submit_reports_each_item(cluster):
    good = {"name": "a", "profile": "docker-batch",
            "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    reply = cluster.post("/tasks", json=[good, {"name": "b", "profile": "zz"}, good]).json()
    assert [r["statusCode"] for r in reply] == [201, 400, 201]
    assert reply[1]["uuid"] is None and "zz" in reply[1]["message"]
    assert len(cluster.get("/tasks").json()) == 2


def test_paging_and_tag_filters(cluster):
    uuids = [cluster.submit("true", tags=[f"t{i % 3}", "all"], name=f"n{i}") for i in range(7)]
    seen, token = [], None
    while True:
        page = cluster.post("/tasks/summaries/paginate",
                            json={"filter": None, "token": token, "maximumResults": 3}).json()
        seen += [t["uuid"] for t in page["data"]]
        if not page["isTruncated"]:
            assert page["nextToken"] is None
            break
        token = page["nextToken"]
    assert seen == uuids
    or_filter = {"operator": "Or", "filters": [
        {"operator": "Equal", "field": "Tags", "value": "t0"},
        {"operator": "Equal", "field": "Tags", "value": "t1"}]}
    page = cluster.post("/tasks/paginate", json={"filter": or_filter}).json()
    assert [t["uuid"] for t in page["data"]] == [u for i, u in enumerate(uuids) if i % 3 < 2]
    assert "status" in page["data"][0]
    and_filter = {"operator": "And", "filters": [
        {"operator": "Equal", "field": "Tags", "value": "t0"},
        {"operator": "Equal", "field": "Name", "value": "n3"}]}
    page = cluster.post("/tasks/paginate", json={"filter": and_filter}).json()
    assert [t["uuid"] for t in page["data"]] == [uuids[3]]
    bad = cluster.post("/tasks/paginate", json={"filter": {"operator": "Equal", "field": "Zz"}})
    assert bad.status_code == 400 and "Zz" in bad.json()["message"]
    assert cluster.get("/tasks?tag=t2").json()[0]["uuid"] == uuids[2]


def test_put_changes_mutable_fields_and_refuses_fixed_ones(cluster):
    uuid = cluster.submit("true", tags=["a"])
    doc = cluster.task(uuid)
    doc["tags"] = ["b", "c"]
    doc["name"] = "renamed"
    assert cluster.put(f"/tasks/{uuid}", json=doc).status_code == 200
    task = cluster.task(uuid)
    assert task["tags"] == ["b", "c"] and task["name"] == "renamed"
    doc["instanceCount"] = 5
    response = cluster.put(f"/tasks/{uuid}", json=doc)
    assert response.status_code == 400 and "instanceCount" in response.json()["message"]
    assert cluster.task(uuid)["instanceCount"] == 1


def test_delete_stops_and_forgets(cluster):
    uuid = cluster.submit("sleep 100")
    key = cluster.wait_dispatched(uuid, 1)[0]
    assert cluster.delete(f"/tasks/{uuid}").status_code == 200
    wait_for(lambda: key in cluster.executor.cancelled)
    assert cluster.get(f"/tasks/{uuid}").status_code == 404
    assert cluster.delete(f"/tasks/{uuid}").status_code == 404


def test_users_are_isolated(cluster):
    created = cluster.post("/admin/users", json={"email": "alice@example.com"})
    assert created.status_code == 201, created.text
    alice = created.json()
    assert alice["bucketPrefix"].startswith("alice-")
    assert cluster.storage.identities["alice@example.com"] == (alice["token"],
                                                                alice["bucketPrefix"])
    uuid = cluster.submit("true")
    as_alice = {"Authorization": alice["token"]}
    assert cluster.client.get(f"/tasks/{uuid}", headers=as_alice).status_code == 404
    assert cluster.client.get("/admin/users", headers=as_alice).status_code == 403
    doc = {"name": "t", "profile": "docker-batch", "resultBucket": "other-bucket",
           "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    refused = cluster.client.post("/tasks", json=doc, headers=as_alice)
    assert refused.status_code == 403 and alice["bucketPrefix"] in refused.json()["message"]
    upper = {**doc, "resultBucket": alice["bucketPrefix"].upper() + "Out"}  # prefixes are exact
    refused = cluster.client.post("/tasks", json=upper, headers=as_alice)
    assert refused.status_code == 403 and refused.json()["code"] == "bucket_forbidden"
    mine = {**doc, "resultBucket": alice["bucketPrefix"] + "Out_1"}
    assert cluster.client.post("/tasks", json=mine, headers=as_alice).status_code == 201
    again = cluster.post("/admin/users", json={"email": "alice@example.com"})
    assert again.status_code == 409
    assert cluster.post("/admin/users", json={"email": "nope"}).status_code == 400
    emails = [u["email"] for u in cluster.get("/admin/users").json()]
    assert emails == ["owner@qcompute.local", "alice@example.com"]


def test_restart_reconciles_running_work(tmp_path, database_url):
    settings, app, _, holder = make_cluster(tmp_path)
    with TestClient(app) as client:
        token = read_token(client_config_path(settings))
        headers = {"Authorization": token}
        doc = {"name": "t", "profile": "docker-batch", "instanceCount": 3,
               "constants": [{"key": "DOCKER_CMD", "value": "sleep 9"}]}
        uuid = client.post("/tasks", json=doc, headers=headers).json()["uuid"]
        wait_for(lambda: len(holder["executor"].keys_of(uuid)) == 2)
    # a new server on the same data: the two lost instances are re-queued, none stays stuck
    _, app2, _, holder2 = make_cluster(tmp_path)
    with TestClient(app2) as client:
        assert read_token(client_config_path(settings)) == token  # same owner token
        keys = wait_for(lambda: len(k := holder2["executor"].keys_of(uuid)) == 2 and k)
        assert all(k.attempt == 2 for k in keys)
        for key in keys:
            holder2["executor"].run(key)
        last = wait_for(lambda: (k := holder2["executor"].keys_of(uuid)) and k[0])
        holder2["executor"].run(last)
        task = wait_for(lambda: (t := client.get(f"/tasks/{uuid}", headers=headers).json())[
            "state"] == "Success" and t)
        assert sorted(c["executionAttemptCount"] for c in task["completedInstances"]) == [1, 2, 2]


def test_executor_refusal_is_an_infrastructure_failure(tmp_path, database_url):
    settings, app, _, holder = make_cluster(tmp_path)
    with TestClient(app) as client:
        headers = {"Authorization": read_token(client_config_path(settings))}
        executor = holder["executor"]
        executor.submit = lambda spec: (_ for _ in ()).throw(RuntimeError("no room"))
        doc = {"name": "t", "profile": "docker-batch",
               "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
        uuid = client.post("/tasks", json=doc, headers=headers).json()["uuid"]
        task = wait_for(lambda: (t := client.get(f"/tasks/{uuid}", headers=headers).json())[
            "state"] == "Failure" and t)
        assert "could not start it: no room" in task["errors"][0]["message"]
        assert task["completedInstances"][0]["executionAttemptCount"] == 3  # 1 + 2 re-queues
        # the loop survived: a later task still gets dispatched
        del executor.submit
        uuid2 = client.post("/tasks", json=doc, headers=headers).json()["uuid"]
        wait_for(lambda: executor.keys_of(uuid2))


def test_info_counts_only_the_callers_own(roomy):
    alice = roomy.post("/admin/users", json={"email": "alice@example.com"}).json()
    as_alice = {"Authorization": alice["token"]}
    prefix = alice["bucketPrefix"]
    roomy.storage.buckets = {f"{prefix}in": 10, f"{prefix}out": 5, "owners-bucket": 100}
    mine = roomy.submit("true", instanceCount=2)
    roomy.wait_dispatched(mine, 2)
    doc = {"name": "t", "profile": "docker-batch", "constants": [{"key": "DOCKER_CMD",
                                                                  "value": "true"}]}
    theirs = roomy.client.post("/tasks", json=doc, headers=as_alice).json()["uuid"]
    roomy.wait_dispatched(theirs, 1)
    roomy.wait_dispatched(roomy.submit("true"), 1)
    owner, other = roomy.get("/info").json(), roomy.client.get("/info", headers=as_alice).json()
    assert (owner["taskCount"], owner["runningTaskCount"]) == (2, 2)
    assert (other["taskCount"], other["runningTaskCount"]) == (1, 1)
    assert (owner["runningInstanceCount"], other["runningInstanceCount"]) == (3, 1)
    assert (other["bucketCount"], other["usedQuotaBytesBucket"]) == (2, 15)
    assert (owner["bucketCount"], owner["usedQuotaBytesBucket"]) == (3, 115)  # every bucket
    assert owner["maxInstances"] == 100_000 and owner["maxFlexCores"] == 4  # the executor's slots
    assert not {"maxTask", "maxPool", "maxBucket", "quotaBytesBucket"} & owner.keys()
    roomy.storage.down = True
    assert roomy.get("/info").json()["bucketCount"] is None  # S3 cannot say: null, not 0


def test_a_submit_that_prefers_the_representation_gets_the_document(cluster):
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    reply = cluster.post("/tasks", json=doc, headers={"Prefer": "return=representation"})
    assert reply.status_code == 201
    assert reply.headers["Preference-Applied"] == "return=representation"
    assert reply.json()["state"] == "Submitted" and reply.json()["name"] == "t"
    assert reply.json().keys() == cluster.task(reply.json()["uuid"]).keys()
    plain = cluster.post("/tasks", json=doc)  # as the official SDK sends it: {"uuid"} only
    assert plain.json().keys() == {"uuid"} and "Preference-Applied" not in plain.headers
    bulk = cluster.post("/tasks", json=[doc], headers={"Prefer": "return=representation"})
    assert bulk.json()[0].keys() == {"statusCode", "uuid", "message"}  # a bulk answers as ever
