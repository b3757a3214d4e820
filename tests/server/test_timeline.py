"""GET /tasks/{uuid}/timeline: when a task was accepted and each instance's attempt reached each
step, from the server's and the runner's own clocks; its owner's alone."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from qcompute.server.app import create_app
from qcompute.server.bootstrap import client_config_path, read_token
from qcompute.server.executors.local import LocalExecutor
from qcompute.server.sandbox import SandboxConfig
from qcompute.server.services.timeline import STEPS
from qcompute.server.settings import ServerSettings

from .conftest import Cluster, StubStorage, wait_for

WIRE_ORDER = list(STEPS.values())
RUNNER_STEPS = ["dispatched", "handedOver", "runnerStarted", "commandStarted", "commandEnded",
                "resultsUploaded", "runnerEnded", "ended"]


@contextlib.contextmanager
def real_cluster(tmp_path, sandbox: SandboxConfig) -> Iterator[Cluster]:
    """The API over real runner workers (no S3: tasks without buckets)."""
    settings = ServerSettings(data_dir=tmp_path, storage="external")
    app = create_app(settings, storage=StubStorage(), executor_factory=lambda on_event:
                     LocalExecutor(on_event, capacity=2, sandbox=sandbox))
    with TestClient(app) as client:
        yield Cluster(client, None, app.state.ctx.storage,  # type: ignore[arg-type]
                      read_token(client_config_path(settings)))


def _another_user(owner: Cluster) -> dict[str, str]:
    response = owner.post("/admin/users", json={"email": "eve@example.com",
                                              "allowUnsandboxed": True})
    assert response.status_code == 201, response.text
    return {"Authorization": response.json()["token"]}


def _in_order(steps: dict[str, float]) -> list[float]:
    assert list(steps) == [s for s in WIRE_ORDER if s in steps]  # sent in the order of STEPS
    return list(steps.values())


@pytest.mark.parametrize("sandboxed", [False, True], ids=["host", "sandbox"])
def test_a_real_run_has_every_step_in_order(tmp_path, database_url, sandboxed):
    sandbox = SandboxConfig(enabled=sandboxed)
    with real_cluster(tmp_path, sandbox) as cluster:
        before = time.time()
        uuid = cluster.submit("echo hi", instanceCount=2)
        wait_for(lambda: cluster.task(uuid)["state"] == "Success", timeout=30)
        seen = time.time()

        response = cluster.get(f"/tasks/{uuid}/timeline")
        assert response.status_code == 200, response.text
        timeline = response.json()
        assert timeline["uuid"] == uuid and before <= timeline["submitted"] <= seen
        assert [i["instanceId"] for i in timeline["instances"]] == [0, 1]
        for instance in timeline["instances"]:
            assert instance["attempt"] == 1 and instance["state"] == "Success"
            steps = instance["timeline"]
            expected = list(RUNNER_STEPS)
            if sandboxed:
                expected.insert(expected.index("commandEnded"), "sandboxReady")
            assert list(steps) == expected
            stamps = _in_order(steps)
            assert [timeline["submitted"], *stamps, seen] == \
                sorted([timeline["submitted"], *stamps, seen])

        other = cluster.client.get(f"/tasks/{uuid}/timeline", headers=_another_user(cluster))
        assert other.status_code == 404 and other.json()["code"] == "task_not_found"


def test_steps_of_an_attempt_in_flight_and_of_a_retry(cluster):
    uuid = cluster.submit("false", retrySettings={"maxPerInstanceRetries": 1})
    first = cluster.wait_dispatched(uuid, 1)[0]

    def steps() -> dict:
        [instance] = cluster.get(f"/tasks/{uuid}/timeline").json()["instances"]
        return instance

    in_flight = steps()
    assert in_flight["attempt"] == 1 and list(in_flight["timeline"]) == ["dispatched"]
    cluster.executor.run(first, exit_code=1)  # the fake executor reports no runner steps
    second = wait_for(lambda: [k for k in cluster.executor.keys_of(uuid) if k.attempt == 2])[0]
    retried = steps()  # a new attempt starts a new timeline
    assert retried["attempt"] == 2 and list(retried["timeline"]) == ["dispatched"]
    assert retried["timeline"]["dispatched"] >= in_flight["timeline"]["dispatched"]
    cluster.executor.run(second, exit_code=0)
    cluster.wait_state(uuid, "Success")
    done = steps()
    assert list(done["timeline"]) == ["dispatched", "handedOver", "ended"]
    _in_order(done["timeline"])
    assert sorted(done["timeline"].values()) == list(done["timeline"].values())


def test_an_unknown_task_is_a_404(cluster):
    response = cluster.get("/tasks/no-such-task/timeline")
    assert response.status_code == 404 and response.json()["code"] == "task_not_found"
