"""Two API replicas in one process, on one PostgreSQL database (the fake executor): one holds
the scheduler, the other relays to it, and the change feeds cross over. The same with real
server processes, and the holder killed: ``tests/e2e/test_replicas.py``."""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from fastapi.testclient import TestClient

from qcompute.server.bootstrap import client_config_path, read_token
from qcompute.server.executors.base import InstanceKey, Telemetry
from qcompute.server.replicas import decode_event, encode_event
from qcompute.server.scheduler import Scheduler

from .conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair(tmp_path, postgres, monkeypatch):
    monkeypatch.setenv("QCOMPUTE_SERVER_DATABASE_URL",
                       postgres.create_database(template=postgres.template))
    with contextlib.ExitStack() as stack:
        clusters = []
        for _ in range(2):  # one data dir: the owner's token and the key are shared
            settings, app, storage, holder = make_cluster(tmp_path)
            client = stack.enter_context(TestClient(app))
            clusters.append(Cluster(client, holder["executor"], storage,
                                    read_token(client_config_path(settings))))
        yield clusters


def test_the_first_holds_the_scheduler_and_the_standby_relays_to_it(pair):
    a, b = pair
    assert [c.get("/health").json()["role"] for c in pair] == ["scheduler", "standby"]
    uuid = b.submit()
    [key] = a.wait_dispatched(uuid, 1)  # the holder's executor got it
    assert not b.executor.specs
    a.executor.run(key, exit_code=0)
    assert b.wait_state(uuid, "Success")["state"] == "Success"


def test_an_abort_on_the_standby_reaches_the_holder(pair):
    a, b = pair
    uuid = a.submit()
    [key] = a.wait_dispatched(uuid, 1)
    assert b.post(f"/tasks/{uuid}/abort").status_code == 200
    wait_for(lambda: key in a.executor.cancelled)
    assert a.wait_state(uuid, "Cancelled")["state"] == "Cancelled"


def test_a_change_on_the_holder_wakes_a_watcher_on_the_standby(pair):
    a, b = pair
    uuid = a.submit()
    [key] = a.wait_dispatched(uuid, 1)
    feed = b.client.app.state.ctx.scheduler.changes

    async def watch() -> None:
        with feed.watching([uuid]) as changed:
            a.executor.start(key)  # the holder's round commits, and publishes
            await asyncio.wait_for(changed, 10)

    asyncio.run(watch())  # woken through NOTIFY, or a TimeoutError


def test_the_standby_serves_the_holders_telemetry_and_running_count(pair):
    a, b = pair
    uuid = a.submit()
    [key] = a.wait_dispatched(uuid, 1)
    a.executor.start(key)
    a.executor.on_event(Telemetry(key, cpu_usage=42.0, cpu_seconds=3.0, memory_mb=64.0,
                                  max_memory_mb=80.0, memory_limit_mb=1024.0,
                                  network_in_kbps=1.5, network_out_kbps=2.5,
                                  frequency_ghz=2.0, max_frequency_ghz=3.0))

    def standby_info():
        info = b.get(f"/tasks/{uuid}").json()["status"]["runningInstancesInfo"]
        return info["perRunningInstanceInfo"]

    [entry] = wait_for(lambda: [e for e in standby_info() if e["cpuUsage"] == 42.0])
    assert (entry["currentMemoryMB"], entry["maxMemoryMB"]) == (64, 80)
    assert b.get("/health").json()["running"] == a.get("/health").json()["running"] == 1
    a.executor.run(key, exit_code=0)
    b.wait_state(uuid, "Success")
    standby_store = b.client.app.state.ctx.scheduler.telemetry
    wait_for(lambda: standby_store.get(key) is None)  # the end is relayed too
    assert b.get("/health").json()["running"] == 0


def test_events_cross_as_json_unchanged():
    kinds = Scheduler.event_kinds()
    for event in (kinds["_Wake"](), kinds["_Abort"](7), kinds["_Submitted"]((1, 2)),
                  kinds["_Forget"]((InstanceKey("u", 0, 1),), ("u",)),
                  kinds["TakeSnapshot"](3, "s"), kinds["RefreshResources"](4)):
        assert decode_event(json.loads(json.dumps(encode_event(event))), kinds) == event
