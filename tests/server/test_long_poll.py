"""Long polls: GET /tasks/{uuid}?wait= and POST /tasks/wait return as soon as tasks change."""
from __future__ import annotations

import threading
import time

from .conftest import wait_for


def _in_background(func):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=func(), at=time.monotonic()))
    thread.start()
    return thread, result


def test_get_with_wait_returns_when_the_state_changes(cluster):
    uuid = cluster.submit("true")
    key = cluster.wait_dispatched(uuid, 1)[0]
    known = cluster.task(uuid)["state"]
    thread, result = _in_background(
        lambda: cluster.get(f"/tasks/{uuid}", params={"wait": 20, "knownState": known}))
    time.sleep(0.3)
    assert thread.is_alive(), "the request must be held while nothing changes"
    changed_at = time.monotonic()
    cluster.executor.run(key)
    thread.join(10)
    assert result["value"].status_code == 200
    assert result["value"].json()["state"] != known
    # woken by the change, not by the end of its 20 s wait (how fast is bench/ territory: one
    # full CI run saw 3.3 s here, the others well under 1 s)
    assert result["at"] - changed_at < 10


def test_get_with_wait_times_out_unchanged(cluster):
    uuid = cluster.submit("true")
    cluster.wait_dispatched(uuid, 1)
    start = time.monotonic()
    doc = cluster.get(f"/tasks/{uuid}", params={"wait": 0.4}).json()
    assert 0.35 < time.monotonic() - start < 3
    assert doc["state"] == "FullyDispatched"


def test_get_with_a_stale_known_state_returns_at_once(cluster):
    uuid = cluster.submit("true")
    start = time.monotonic()
    doc = cluster.get(f"/tasks/{uuid}", params={"wait": 20, "knownState": "Nonsense"}).json()
    assert time.monotonic() - start < 1 and doc["uuid"] == uuid


def test_wait_many_any_and_all(cluster):
    first, second = cluster.submit("true"), cluster.submit("true")
    keys = {u: cluster.wait_dispatched(u, 1)[0] for u in (first, second)}
    thread, any_result = _in_background(lambda: cluster.post(
        "/tasks/wait", json={"uuids": [first, second], "returnWhen": "ANY", "timeout": 20}))
    time.sleep(0.3)
    assert thread.is_alive()
    cluster.executor.run(keys[first])
    thread.join(10)
    reply = any_result["value"].json()
    assert reply["done"] and reply["states"][first] == "Success"
    assert reply["states"][second] != "Success"

    thread, all_result = _in_background(lambda: cluster.post(
        "/tasks/wait", json={"uuids": [first, second], "returnWhen": "ALL", "timeout": 20}))
    time.sleep(0.3)
    assert thread.is_alive()
    cluster.executor.run(keys[second])
    thread.join(10)
    assert all_result["value"].json() == {"done": True,
                                          "states": {first: "Success", second: "Success"}}


def test_wait_many_validates(cluster):
    missing = cluster.post("/tasks/wait", json={"uuids": ["nope"], "timeout": 1})
    assert missing.status_code == 404 and "nope" in missing.json()["message"]
    empty = cluster.post("/tasks/wait", json={"uuids": []})
    assert empty.status_code == 400 and "uuids" in empty.json()["message"]
    wrong = cluster.post("/tasks/wait", json={"uuids": ["a"], "returnWhen": "SOME"})
    assert wrong.status_code == 400 and "returnWhen" in wrong.json()["message"]
    assert cluster.client.post("/tasks/wait", json={"uuids": ["a"]}).status_code == 401
    negative = cluster.get("/tasks/x", params={"wait": -1})
    assert negative.status_code == 400 and "wait" in negative.json()["message"]


def test_wait_capped_by_the_server(tmp_path, database_url):
    from fastapi.testclient import TestClient

    from qcompute.server.bootstrap import client_config_path, read_token

    from .conftest import make_cluster

    settings, app, _, holder = make_cluster(tmp_path, long_poll_max_seconds=1)
    with TestClient(app) as client:
        headers = {"Authorization": read_token(client_config_path(settings))}
        doc = {"name": "t", "profile": "docker-batch",
               "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
        uuid = client.post("/tasks", json=doc, headers=headers).json()["uuid"]
        wait_for(lambda: holder["executor"].keys_of(uuid))
        start = time.monotonic()
        client.get(f"/tasks/{uuid}", params={"wait": 30}, headers=headers)
        assert time.monotonic() - start < 3


def test_get_until_final_is_held_through_the_changes_on_the_way(cluster):
    uuid = cluster.submit("true", instanceCount=2)
    first, second = cluster.wait_dispatched(uuid, 2)
    thread, result = _in_background(lambda: cluster.get(
        f"/tasks/{uuid}", params={"wait": 20, "knownState": "Submitted", "until": "final"}))
    cluster.executor.start(first)  # FullyDispatched → FullyExecuting: not final, still held
    cluster.executor.run(first)
    time.sleep(0.3)
    assert thread.is_alive(), "held until the task is final"
    ended_at = time.monotonic()
    cluster.executor.run(second)
    thread.join(10)
    assert result["value"].json()["state"] == "Success"
    assert result["at"] - ended_at < 1.0


def test_get_until_something_else_is_refused(cluster):
    uuid = cluster.submit("true")
    reply = cluster.get(f"/tasks/{uuid}", params={"wait": 1, "until": "running"})
    assert reply.status_code == 400 and "until" in reply.json()["message"]


def test_output_from_an_offset_is_held_until_output_arrives(cluster):
    """GET /tasks/{uuid}/stdout?offset=N&wait=S: the bytes from N, held while there are none;
    X-Output-Offset says where to read next, X-Output-Complete once the task is final."""
    from qcompute.server.executors.base import Output

    uuid = cluster.submit("true")
    key = cluster.wait_dispatched(uuid, 1)[0]
    cluster.executor.start(key)
    cluster.executor.on_event(Output(key, "stdout", "one\ntw"))
    first = cluster.get(f"/tasks/{uuid}/stdout", params={"offset": 0, "wait": 20})
    assert first.text == "one\ntw" and first.headers["X-Output-Offset"] == "6"
    assert "X-Output-Complete" not in first.headers
    thread, result = _in_background(lambda: cluster.get(
        f"/tasks/{uuid}/stdout", params={"offset": 6, "wait": 20}))
    time.sleep(0.3)
    assert thread.is_alive(), "nothing past the offset: the read must be held"
    cluster.executor.on_event(Output(key, "stdout", "o\n"))
    thread.join(10)
    assert result["value"].text == "o\n" and result["value"].headers["X-Output-Offset"] == "8"
    thread, result = _in_background(lambda: cluster.get(
        f"/tasks/{uuid}/stdout/0", params={"offset": 8, "wait": 20}))
    time.sleep(0.3)
    assert thread.is_alive()
    cluster.executor.run(key, stdout="three\n")
    thread.join(10)
    assert result["value"].text == "three\n"
    cluster.wait_state(uuid, "Success")
    last = cluster.get(f"/tasks/{uuid}/stdout", params={"offset": 14, "wait": 20})
    assert last.text == "" and last.headers["X-Output-Complete"] == "true"
    whole = cluster.get(f"/tasks/{uuid}/stdout")  # the plain read is unchanged
    assert whole.text == "one\ntwo\nthree\n" and whole.headers["X-Output-Offset"] == "14"
    assert cluster.post(f"/tasks/{uuid}/stdout").text == "one\ntwo\nthree\n"  # cursors apart


def test_output_offset_read_validates(cluster):
    uuid = cluster.submit("true")
    reply = cluster.get(f"/tasks/{uuid}/stdout", params={"offset": -1})
    assert reply.status_code in (400, 422) and "message" in reply.json()
    assert cluster.get("/tasks/nope/stdout", params={"offset": 0}).status_code == 404
