"""conn.wait_tasks: one long poll for many tasks, or polling when the server has none."""
from __future__ import annotations

import json

import pytest
import responses

from qcompute import ALL, ANY, Connection, ResourceStateError, TaskState

from .conftest import FakeClock
from .helpers import API, task_doc

UUIDS = ["7a3c9e52-0000-4000-8000-00000000000a", "7a3c9e52-0000-4000-8000-00000000000b"]


def _tasks(api: responses.RequestsMock, conn: Connection) -> list:
    tasks = []
    for uuid in UUIDS:
        api.add("GET", f"{API}/tasks/{uuid}", json=task_doc(uuid=uuid))
        tasks.append(conn.retrieve_task(uuid))
    api.calls.reset()
    return tasks


def _page(*states: str) -> dict:
    return {"data": [task_doc(uuid=u, state=s) for u, s in zip(UUIDS, states, strict=True)],
            "token": None, "nextToken": None, "isTruncated": False}


def test_long_poll_for_all_then_one_refresh(api: responses.RequestsMock, clock: FakeClock) -> None:
    conn = Connection(client_token="tok", cluster_url=API, storage_url="http://s3.test")
    tasks = _tasks(api, conn)
    api.add("GET", f"{API}/settings", json={"storage": "http://s3.test", "taskWaitMaxSeconds": 60})
    api.add("POST", f"{API}/tasks/wait", json={"done": False, "states": {}})
    api.add("POST", f"{API}/tasks/wait", json={"done": True, "states": {}})
    api.add("POST", f"{API}/tasks/paginate", json=_page("Success", "Failure"))
    assert conn.wait_tasks(tasks, timeout=100) is True
    assert clock.sleeps == []
    waits = [json.loads(c.request.body) for c in api.calls if c.request.url.endswith("/wait")]
    assert waits[0] == {"uuids": UUIDS, "returnWhen": "ALL", "timeout": 60}
    refresh = json.loads(api.calls[-1].request.body)
    assert refresh["filter"] == {"operator": "In", "field": "Uuid", "value": UUIDS}
    assert [t.state for t in tasks] == [TaskState.SUCCESS, TaskState.FAILURE]


def test_polling_for_any_without_long_poll(api: responses.RequestsMock, conn: Connection,
                                           clock: FakeClock) -> None:
    tasks = _tasks(api, conn)
    summaries = f"{API}/tasks/summaries/paginate"
    api.add("POST", summaries, json=_page("FullyExecuting", "Submitted"))
    api.add("POST", summaries, json=_page("FullyExecuting", "Success"))
    api.add("POST", f"{API}/tasks/paginate", json=_page("FullyExecuting", "Success"))
    assert conn.wait_tasks(tasks, return_when=ANY) is True
    assert clock.sleeps == [0.05]
    assert tasks[1].state == TaskState.SUCCESS and tasks[0].state == TaskState.FULLY_EXECUTING


def test_polling_times_out(api: responses.RequestsMock, conn: Connection,
                           clock: FakeClock) -> None:
    tasks = _tasks(api, conn)
    api.add("POST", f"{API}/tasks/summaries/paginate", json=_page("FullyExecuting", "Success"))
    api.add("POST", f"{API}/tasks/paginate", json=_page("FullyExecuting", "Success"))
    start = clock.now
    assert conn.wait_tasks(tasks, timeout=1.0, return_when=ALL) is False
    assert clock.now - start == pytest.approx(1.0)


def test_bad_arguments(api: responses.RequestsMock, conn: Connection) -> None:
    with pytest.raises(ValueError, match="ALL or ANY"):
        conn.wait_tasks([], return_when="SOME")
    with pytest.raises(ResourceStateError, match="not submitted"):
        conn.wait_tasks([conn.create_task("t", "docker-batch")])
    assert conn.wait_tasks([]) is True
    assert len(api.calls) == 0
