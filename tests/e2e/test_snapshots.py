"""Snapshots and resource updates on the real embedded cluster (raw calls: the dialect's paths)."""
from __future__ import annotations

import time

import pytest

from qcompute import TaskState
from qcompute.exceptions import UnauthorizedException

from tests.helpers import sh


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} not reached in time"
        time.sleep(0.1)
    return value


def test_snapshots_and_resource_updates_of_a_running_task(conn):
    http = conn._http
    resources = conn.create_bucket("e2e-snap-in")
    resources.add_string("v1", "a.txt")
    results = conn.create_bucket("e2e-snap-out")
    task = conn.create_task("snapshots", "docker-batch")
    task.resources = [resources]
    task.results = results
    # copies each new resource into the results, then waits for the stop marker
    task.constants["DOCKER_CMD"] = sh(
        "mkdir -p out; echo started > out/state.txt; echo ready; "
        "while [ ! -f stop.txt ]; do [ -f b.txt ] && cp b.txt out/b-copy.txt; sleep 0.1; done")
    task.submit()
    uuid = task.uuid
    # as the official SDK does right after submit
    http.request("POST", f"/tasks/{uuid}/snapshot/periodic",
                 json={"interval": 1, "whitelist": None, "blacklist": None, "bucket": None,
                       "bucketPrefix": "periodic/"})
    wait_until(lambda: "ready" in task.fresh_stdout(), what="the command's start")

    snapshot_id = http.request("POST", f"/tasks/{uuid}/snapshot",
                               json={"whitelist": r"^out/", "bucketPrefix": "now/"})["id"]
    doc = wait_until(lambda: (d := http.request("GET", f"/tasks/{uuid}/snapshot/{snapshot_id}"))
                     ["status"] in ("Success", "Failure") and d, what="the snapshot")
    assert doc["status"] == "Success", doc
    assert doc["transferredSize"] == doc["sizeToUpload"] == len("started\n")
    assert "now/out/state.txt" in results.list_files()
    wait_until(lambda: "periodic/out/state.txt" in results.list_files(), what="a periodic round")

    resources.add_string("new", "b.txt")
    assert http.request("PATCH", f"/tasks/{uuid}")["uuid"] == uuid
    wait_until(lambda: "periodic/out/b-copy.txt" in results.list_files(),
               what="the refreshed resource, in a periodic snapshot")

    data = http.request("GET", f"/tasks/{uuid}")
    assert data["state"] == "FullyExecuting" and data["snapshotInterval"] == 1
    # the keys of the latest snapshot round (periodic rounds upload only what changed)
    latest = data["status"]["runningInstancesInfo"]["snapshotResults"]
    assert latest and all(k.startswith(("now/out/", "periodic/out/")) for k in latest), latest

    resources.add_string("", "stop.txt")
    http.request("PATCH", f"/tasks/{uuid}")
    assert task.wait(timeout=60)
    assert task.state == TaskState.SUCCESS, task.errors
    final = {k for k in results.list_files() if not k.startswith(("now/", "periodic/"))}
    assert final == {"out/state.txt", "out/b-copy.txt"}  # resources are not results
    with pytest.raises(UnauthorizedException, match="not running") as raised:
        http.request("POST", f"/tasks/{uuid}/snapshot", json={})
    assert raised.value.status_code == 403
