"""Connection: account and profiles, listing with tag filters, bulk submit, lazy storage."""
from __future__ import annotations

import json
from typing import Any

import pytest
import responses

from qcompute import (
    APIError,
    Bucket,
    Connection,
    MissingBucketException,
    MissingProfileException,
    MissingTaskException,
    Profile,
    ResourceStateError,
    StorageError,
    TaskState,
)

from qcompute import connection as connection_module

from .helpers import API, S3, TASK_UUID, TOKEN, FakeStorage, body, task_doc

PAGE = f"{API}/tasks/paginate"
SUMMARIES = f"{API}/tasks/summaries/paginate"


def page(data: list[Any], next_token: Any = None, truncated: bool = False) -> dict[str, Any]:
    return {"data": data, "token": None, "nextToken": next_token, "isTruncated": truncated}


# ----------------------------------------------------------------------------- account, profiles
def test_user_info_is_fresh_each_read_and_caches_the_email(api: responses.RequestsMock,
                                                           conn: Connection) -> None:
    api.add("GET", f"{API}/info", json={"email": "me@x.org", "taskCount": 3, "maxTask": 10,
                                        "maxFlexCores": 8, "other": "raw"})
    api.add("GET", f"{API}/info", json={"email": "me@x.org", "taskCount": 4})
    info = conn.user_info
    assert (info.email, info.task_count, info.max_task, info.max_cores) == ("me@x.org", 3, 10, 8)
    assert info["other"] == "raw"
    assert conn.user_info.task_count == 4
    assert conn._s3_keys() == ("me@x.org", TOKEN)  # the Qarnot convention: email, token
    assert len(api.calls) == 3


def test_s3_keys_given_by_the_server_replace_email_and_token(api: responses.RequestsMock,
                                                             conn: Connection) -> None:
    """An external S3 store issued the user its own key pair: GET /info hands it over."""
    api.add("GET", f"{API}/info", json={"email": "me@x.org", "storageKeys": {
        "accessKey": "AKIAEXAMPLE", "secretKey": "s3cr3t"}})
    assert conn._s3_keys() == ("AKIAEXAMPLE", "s3cr3t")


def test_profiles(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{API}/profiles", json=["docker-batch", "other"])
    api.add("GET", f"{API}/profiles/docker-batch", json={
        "name": "docker-batch", "constants": [{"name": "DOCKER_REPO", "value": "library/ubuntu"},
                                              {"name": "DOCKER_CMD", "value": ""}]})
    api.add("GET", f"{API}/profiles/other", json={"name": "other", "constants": []})
    profiles = conn.profiles()
    assert profiles == [
        Profile("docker-batch", {"DOCKER_REPO": "library/ubuntu", "DOCKER_CMD": ""}),
        Profile("other", {}),
    ]
    api.add("GET", f"{API}/profiles", json=["docker-batch"])
    assert conn.profiles_names() == ["docker-batch"]


def test_retrieve_missing_profile(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{API}/profiles/nope", status=404, json={"message": "no profile nope"})
    with pytest.raises(MissingProfileException, match="no profile nope"):
        conn.retrieve_profile("nope")


def test_retrieve_task(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{API}/tasks/{TASK_UUID}", json=task_doc(state="FullyExecuting"))
    api.add("GET", f"{API}/tasks/nope", status=404, json={"message": "no task"})
    task = conn.retrieve_task(TASK_UUID)
    assert (task.uuid, task.name, task.state) == (TASK_UUID, "hello", TaskState.FULLY_EXECUTING)
    with pytest.raises(MissingTaskException):
        conn.retrieve_task("nope")


# ----------------------------------------------------------------------------- listing
def test_all_tasks_follows_next_token(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", PAGE, json=page([task_doc("u1"), task_doc("u2")], "t2", True))
    api.add("POST", PAGE, json=page([task_doc("u3")], "t3", False))
    tasks = list(conn.all_tasks())
    assert [t.uuid for t in tasks] == ["u1", "u2", "u3"]
    assert [body(c) for c in api.calls] == [
        {"filter": None, "token": None, "maximumResults": 1000},  # few round trips
        {"filter": None, "token": "t2", "maximumResults": 1000},
    ]
    keys = [c.request.headers["Idempotency-Key"] for c in api.calls]
    assert len(set(keys)) == 2


@pytest.mark.parametrize("kwargs, expected", [
    ({"tags": ["a", "b"]}, {"operator": "Or", "filters": [
        {"operator": "Equal", "field": "Tags", "value": "a"},
        {"operator": "Equal", "field": "Tags", "value": "b"}]}),
    ({"tags_intersect": ["a", "b"]}, {"operator": "And", "filters": [
        {"operator": "Equal", "field": "Tags", "value": "a"},
        {"operator": "Equal", "field": "Tags", "value": "b"}]}),
    ({"tags": ["x"], "tags_intersect": ["a", "b"]}, {"operator": "And", "filters": [
        {"operator": "Equal", "field": "Tags", "value": "a"},
        {"operator": "Equal", "field": "Tags", "value": "b"}]}),
    ({"tags": "solo"}, {"operator": "Equal", "field": "Tags", "value": "solo"}),
    ({"tags": ["solo"]}, {"operator": "Equal", "field": "Tags", "value": "solo"}),
])
def test_tag_filters(api: responses.RequestsMock, conn: Connection, kwargs: dict[str, Any],
                     expected: dict[str, Any]) -> None:
    api.add("POST", PAGE, json=page([task_doc()]))
    assert len(conn.tasks(**kwargs)) == 1
    assert body(api.calls[0])["filter"] == expected


def test_summaries_are_partial_and_load_on_demand(api: responses.RequestsMock,
                                                  conn: Connection) -> None:
    summary = {"uuid": TASK_UUID, "name": "hello", "state": "Success", "profile": "docker-batch"}
    api.add("POST", SUMMARIES, json=page([summary]))
    (task,) = conn.tasks(summary=True)
    assert (task.name, task.state) == ("hello", TaskState.SUCCESS)
    assert len(api.calls) == 1
    api.add("GET", f"{API}/tasks/{TASK_UUID}", json=task_doc(state="Success"))
    assert task.constants == {"DOCKER_CMD": "echo hi"}
    assert len(api.calls) == 2


def test_paging_reply_without_data_is_an_error(api: responses.RequestsMock,
                                               conn: Connection) -> None:
    api.add("POST", PAGE, json={"data": None, "isTruncated": False})
    with pytest.raises(APIError, match="data"):
        conn.tasks()


def test_paging_stops_on_a_repeated_token(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", PAGE, json=page([task_doc("u1")], "same", True))
    api.add("POST", PAGE, json=page([task_doc("u2")], "same", True))
    with pytest.raises(APIError, match="same nextToken"):
        conn.tasks()


# ----------------------------------------------------------------------------- bulk submit
def test_submit_tasks_in_one_post(api: responses.RequestsMock, conn: Connection) -> None:
    tasks = [conn.create_task(f"t{i}", "docker-batch", i + 1) for i in range(2)]
    api.add("POST", f"{API}/tasks", json=[
        {"statusCode": 201, "uuid": "u0", "message": ""},
        {"statusCode": 201, "uuid": "u1", "message": ""}])
    conn.submit_tasks(tasks)
    assert len(api.calls) == 1, "one request for the whole batch, no GET per task"
    sent = body(api.calls[0])
    assert [d["name"] for d in sent] == ["t0", "t1"]
    assert [d["instanceCount"] for d in sent] == [1, 2]
    assert "Idempotency-Key" in api.calls[0].request.headers
    assert [t.uuid for t in tasks] == ["u0", "u1"]
    assert tasks[1].instancecount == 2 and len(api.calls) == 1  # what was sent is known
    api.add("GET", f"{API}/tasks/u0", json=task_doc("u0", name="t0", state="FullyExecuting"))
    assert tasks[0].state == TaskState.FULLY_EXECUTING  # a server field: fetched on first read
    assert [c.request.url for c in api.calls[1:]] == [f"{API}/tasks/u0"]


def test_submit_tasks_reports_every_failure(api: responses.RequestsMock,
                                            conn: Connection) -> None:
    tasks = [conn.create_task(n, "docker-batch") for n in ("ok", "bad1", "bad2")]
    api.add("POST", f"{API}/tasks", json=[
        {"statusCode": 201, "uuid": "u0", "message": ""},
        {"statusCode": 400, "uuid": None, "message": "unknown profile"},
        {"statusCode": 402, "uuid": None, "message": "no credits"}])
    with pytest.raises(APIError) as caught:
        conn.submit_tasks(tasks)
    error = caught.value
    assert "2 of 3 tasks" in error.message
    assert "'bad1' (400): unknown profile" in error.message and "no credits" in error.message
    assert error.details == [
        {"name": "bad1", "statusCode": 400, "message": "unknown profile"},
        {"name": "bad2", "statusCode": 402, "message": "no credits"}]
    assert tasks[0].uuid == "u0" and tasks[1].uuid is None


def test_submit_tasks_sends_a_big_batch_in_requests_under_the_body_limit(
        api: responses.RequestsMock, conn: Connection, monkeypatch) -> None:
    monkeypatch.setattr(connection_module, "_BULK_BYTES", 2000)
    tasks = [conn.create_task(f"t{i}", "docker-batch") for i in range(12)]
    for task in tasks:
        task.constants["DOCKER_CMD"] = "x" * 300

    def reply(request):
        sent = json.loads(request.body)
        return 200, {}, json.dumps([{"statusCode": 201, "uuid": d["name"], "message": ""}
                                    for d in sent])

    api.add_callback("POST", f"{API}/tasks", callback=reply)
    conn.submit_tasks(tasks)
    sizes = [len(c.request.body) for c in api.calls]
    assert len(sizes) > 1 and max(sizes) <= 2000
    assert [d["name"] for c in api.calls for d in body(c)] == [f"t{i}" for i in range(12)]
    assert len({c.request.headers["Idempotency-Key"] for c in api.calls}) == len(sizes)
    assert [t.uuid for t in tasks] == [f"t{i}" for i in range(12)]


def test_submit_tasks_refuses_submitted_tasks(api: responses.RequestsMock,
                                              conn: Connection) -> None:
    api.add("GET", f"{API}/tasks/{TASK_UUID}", json=task_doc())
    done = conn.retrieve_task(TASK_UUID)
    with pytest.raises(ResourceStateError):
        conn.submit_tasks([conn.create_task("new", "docker-batch"), done])
    assert len(api.calls) == 1


# ----------------------------------------------------------------------------- storage
def test_storage_is_built_lazily_from_settings_and_info(api: responses.RequestsMock) -> None:
    conn = Connection(client_token=TOKEN, cluster_url=API)
    assert len(api.calls) == 0
    api.add("GET", f"{API}/settings", json={"storage": "http://127.0.0.1:18333/"})
    api.add("GET", f"{API}/info", json={"email": "me@x.org"})
    client = conn.s3client
    assert conn.s3client is client  # built once
    assert [c.request.url for c in api.calls] == [f"{API}/settings", f"{API}/info"]
    assert conn.storage_url == "http://127.0.0.1:18333"
    assert client.meta.endpoint_url == "http://127.0.0.1:18333"
    assert client.meta.region_name == "us-east-1"
    credentials = conn._storage._session.get_credentials()
    assert (credentials.access_key, credentials.secret_key) == ("me@x.org", TOKEN)
    assert conn.s3resource.meta.client.meta.endpoint_url == "http://127.0.0.1:18333"
    conn.close()


def test_configured_storage_url_skips_settings(api: responses.RequestsMock) -> None:
    conn = Connection(client_token=TOKEN, cluster_url=API, storage_url=S3 + "/")
    api.add("GET", f"{API}/info", json={"email": "me@x.org"})
    assert conn.s3client.meta.endpoint_url == S3
    assert [c.request.url for c in api.calls] == [f"{API}/info"]


FRONT = "http://127.0.0.1:18334"


@pytest.mark.parametrize("storage_url, settings, creator", [
    (None, {"storage": S3 + "/", "qcomputeCreateBucketUrl": FRONT + "/"}, FRONT),
    (S3, {"storage": S3, "qcomputeCreateBucketUrl": FRONT}, FRONT),
    ("http://elsewhere.test", {"storage": S3, "qcomputeCreateBucketUrl": FRONT},
     "http://elsewhere.test"),  # the front relays to the advertised storage only
    (None, {"storage": S3}, S3),  # no front (or Qarnot's API): the storage itself
])
def test_create_bucket_url_comes_from_settings(api: responses.RequestsMock,
                                               storage_url: Any, settings: dict[str, Any],
                                               creator: str) -> None:
    conn = Connection(client_token=TOKEN, cluster_url=API, storage_url=storage_url)
    api.add("GET", f"{API}/settings", json=settings)
    api.add("GET", f"{API}/info", json={"email": "me@x.org"})
    assert conn._storage._bucket_creator().meta.endpoint_url == creator
    conn.close()


@pytest.mark.parametrize("settings", [{}, {"storage": None}])
def test_no_storage_advertised(api: responses.RequestsMock, settings: dict[str, Any]) -> None:
    conn = Connection(client_token=TOKEN, cluster_url=API)
    api.add("GET", f"{API}/settings", json=settings)
    with pytest.raises(StorageError, match="no storage"):
        conn.s3client


def test_bucket_helpers(conn: Connection, storage: FakeStorage) -> None:
    created = conn.create_bucket("b1")
    assert isinstance(created, Bucket) and created.name == created.uuid == "b1"
    assert conn.retrieve_or_create_bucket("b1").name == "b1"
    assert conn.retrieve_bucket("b1").name == "b1"
    with pytest.raises(MissingBucketException):
        conn.retrieve_bucket("nope")
    assert [b.name for b in conn.buckets()] == ["b1"]
    assert storage.ops("create_bucket", "head_bucket") == [
        ("create_bucket", "b1"), ("create_bucket", "b1"), ("head_bucket", "b1"),
        ("head_bucket", "nope")]


def test_context_manager_closes_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[bool] = []
    with Connection(client_token=TOKEN, cluster_url=API) as conn:
        monkeypatch.setattr(conn._http.session, "close", lambda: closed.append(True))
        assert TOKEN not in repr(conn)
    assert closed == [True]
