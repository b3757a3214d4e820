"""RayExecutor through the real scheduler and API, on a Ray cluster of this host.

One ``ray.cluster_utils.Cluster`` for the whole session (a head labelled zone=a, a node labelled
zone=b with a custom resource ``licence``), token authentication on; one server (SQLite, stub
storage, the sandbox this host can run) for the module. Starting Ray costs seconds: marked
``ray`` and ``slow``.
"""
from __future__ import annotations

import os
import secrets
import signal
import time

import pytest
import ray
from fastapi.testclient import TestClient
from ray.cluster_utils import Cluster as RayCluster
from sqlalchemy import select

from qcompute.server.app import create_app
from qcompute.server.bootstrap import client_config_path, read_token
from qcompute.server.db.models import Instance, Task
from qcompute.server.executors.base import Finished, InstanceSpec, Placed
from qcompute.server.executors.ray_executor import RayExecutor, use_token
from qcompute.server.settings import ServerSettings

from .conftest import Cluster, StubStorage, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ZONE_B = {"discriminator": "SpecificHardwareConstraint", "specificationKey": "zone=b"}
ZONE_A = {"discriminator": "SpecificHardwareConstraint", "specificationKey": "zone=a"}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """Two Ray nodes on this host; the token is in the environment of everything started."""
    token = tmp_path_factory.mktemp("ray") / "token"
    token.write_text(secrets.token_hex(32))
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    use_token(token)
    started = time.monotonic()
    cluster = RayCluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, include_dashboard=False, labels={"zone": "a"}))
    cluster.add_node(num_cpus=1, labels={"zone": "b"}, resources={"licence": 1})
    cluster.token = token
    cluster.started_in = time.monotonic() - started
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Storage(StubStorage):
    qarnot_sdk_endpoint_url = StubStorage.endpoint_url


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory):
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("server"), storage="external",
                              executor="ray", ray_address=ray_cluster.address,
                              ray_token_file=ray_cluster.token, kill_grace_seconds=2,
                              scheduler_tick_seconds=0.2)
    app = create_app(settings, storage=_Storage())
    with TestClient(app) as client:
        running = Cluster(client, client.app.state.ctx.scheduler.executor, app.state.ctx.storage,
                          read_token(client_config_path(settings)))
        yield running


def _node_ids() -> dict[str, str]:
    return {n["Labels"].get("zone"): n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _wait_state(server: Cluster, uuid: str, state: str, timeout: float = 60.0) -> dict:
    return wait_for(lambda: (t := server.task(uuid))["state"] == state and t, timeout)


def _instances(server: Cluster, uuid: str) -> list[Instance]:
    with server.client.app.state.ctx.sessions() as session:
        task = session.scalar(select(Task).where(Task.uuid == uuid))
        return list(session.scalars(select(Instance).where(Instance.task_id == task.id)
                                    .order_by(Instance.instance_id)))


def test_instances_run_stream_output_and_know_their_node(server):
    uuid = server.submit("sh -c 'echo node=$QCOMPUTE_NODE; echo err >&2'", instanceCount=3)
    task = _wait_state(server, uuid, "Success")
    nodes = {node_id for node_id in _node_ids().values()}
    stdout = server.get(f"/tasks/{uuid}/stdout").text
    lines = sorted(line for line in stdout.splitlines() if line.startswith("node="))
    assert len(lines) == 3
    for line in lines:
        hostname, node_id = line[len("node="):].split("/")
        assert node_id in nodes and hostname
    assert "err" in server.get(f"/tasks/{uuid}/stderr").text
    for done in task["completedInstances"]:
        assert done["node"]["id"] in nodes and done["state"] == "Success"
        assert f"{done['node']['hostname']}/{done['node']['id']}" in stdout


def test_nodes_are_listed_with_their_slots(server):
    health = server.client.get("/health").json()
    assert health["executor"] == "ray" and health["capacity"] == 2
    page = server.get("/hardware-constraints").json()
    by_zone = {node["labels"].get("zone"): node for node in page["nodes"]}
    assert set(by_zone) == {"a", "b"}
    assert by_zone["b"]["resources"] == {"licence": 1.0}
    assert by_zone["b"]["cores"] == 1 and by_zone["b"]["slots"] == 1
    assert by_zone["b"]["memoryMB"] > 0 and 0 <= by_zone["b"]["freeSlots"] <= 1
    keys = {c.get("specificationKey") for c in page["data"]}
    assert {"zone=a", "zone=b", "licence"} <= keys


@pytest.mark.parametrize("constraint,zone", [
    (ZONE_B, "b"), (ZONE_A, "a"),
    ({"discriminator": "SpecificHardwareConstraint", "specificationKey": "licence"}, "b")])
def test_a_label_or_resource_constraint_selects_its_node(server, constraint, zone):
    uuid = server.submit("true", instanceCount=2, hardwareConstraints=[constraint])
    task = _wait_state(server, uuid, "Success")
    wanted = _node_ids()[zone]
    assert [i["node"]["id"] for i in task["completedInstances"]] == [wanted, wanted]


def test_a_constraint_no_node_meets_is_refused(server):
    reply = server.post("/tasks", json={
        "name": "t", "profile": "docker-batch", "hardwareConstraints": [
            {"discriminator": "SpecificHardwareConstraint", "specificationKey": "zone=c"}],
        "constants": [{"key": "DOCKER_CMD", "value": "true"}]})
    assert reply.status_code == 400
    assert reply.json()["code"] == "unsatisfiable_hardware_constraint"


def test_abort_stops_a_running_instance(server):
    uuid = server.submit("sleep 60")
    task = _wait_state(server, uuid, "FullyExecuting")
    running = task["status"]["runningInstancesInfo"]["perRunningInstanceInfo"]
    assert running[0]["node"]["id"] in _node_ids().values()
    assert server.post(f"/tasks/{uuid}/abort").status_code == 200
    task = _wait_state(server, uuid, "Cancelled", timeout=30)
    assert task["completedInstances"][0]["state"] == "Cancelled"
    assert not server.executor.running()


def test_a_cancel_sent_before_the_instance_started_reaches_its_runner(server, tmp_path):
    """A second executor on the same Ray cluster (its own mailbox, the same worker processes):
    a cancel sent right after the submit waits for the worker to start the instance, then the
    runner stops the command (its own Finished, with a timeline: not the force-cancel)."""
    events = []
    executor = RayExecutor(events.append)
    try:
        spec = InstanceSpec(task_uuid="cancel-early", instance_id=0, attempt=1,
                            command="sleep 60", env={}, workdir=str(tmp_path / "job"),
                            kill_grace_seconds=2)
        executor.submit(spec)
        executor.cancel(spec.key)
        end = wait_for(lambda: next((e for e in events if isinstance(e, Finished)), None), 60)
    finally:
        executor.shutdown()
    assert isinstance(events[0], Placed) and events[0].node_id in _node_ids().values()
    assert end.cancelled and end.error is None and "runner_started" in end.timeline
    assert not executor.running()


def test_a_node_removed_mid_run_gives_an_infra_failure_and_a_rerun(server, ray_cluster):
    fillers = [server.submit("sleep 120", hardwareConstraints=[zone]) for zone in (ZONE_A, ZONE_B)]
    for uuid in fillers:
        _wait_state(server, uuid, "FullyExecuting")
    doomed = ray_cluster.add_node(num_cpus=1, labels={"zone": "c"})
    try:
        wait_for(lambda: server.client.get("/health").json()["capacity"] == 3, 30)
        victim = server.submit("sleep 5")  # the only free slot is on the new node
        doomed_id = _node_ids()["c"]
        wait_for(lambda: (i := _instances(server, victim)[0]).node
                 and i.node["id"] == doomed_id and i.state == "Running", 60)
    finally:
        ray_cluster.remove_node(doomed)
    first = wait_for(lambda: (i := _instances(server, victim)[0]).infra_failures and i, 60)
    assert first.error and "Ray" in first.error
    for uuid in fillers:
        server.post(f"/tasks/{uuid}/abort")
    _wait_state(server, victim, "Success", timeout=60)
    again = _instances(server, victim)[0]
    assert again.infra_failures == 1 and again.attempt == 2
    assert again.node["id"] != doomed_id


# -- pools hold their slots as placement groups -----------------------------------------------

def _pool(server: Cluster, slots: int, **fields) -> str:
    reply = server.post("/pools", json={"name": "p", "profile": "docker-batch",
                                        "instanceCount": slots, **fields})
    assert reply.status_code == 201, reply.text
    return reply.json()["uuid"]


def _groups(pool_uuid: str) -> list[dict]:
    """Ray's placement groups of a pool, removed ones left out."""
    return [pg for pg in ray.util.placement_group_table().values()
            if pg["name"] == f"qcompute-pool-{pool_uuid}" and pg["state"] != "REMOVED"]


def _explain(server: Cluster, uuid: str, code: str) -> dict:
    return wait_for(lambda: next((r for r in server.get(f"/tasks/{uuid}/explain")
                                  .json()["reasons"] if r["code"] == code), None), 30,
                    what=f"an explain reason {code}")


def test_a_pool_holds_its_slots_as_a_placement_group_its_instances_run_in(server):
    pool = _pool(server, 2)
    group = wait_for(lambda: (found := _groups(pool)) and found[0]["state"] == "CREATED"
                     and found, 30, what="the pool's placement group")
    assert len(group) == 1 and len(group[0]["bundles"]) == 2
    assert all(bundle == {"CPU": 1.0} for bundle in group[0]["bundles"].values())
    nodes = server.client.get("/health").json()["nodes"]  # idle, the bundles are not free
    assert sum(n["heldSlots"] for n in nodes) == 2 and sum(n["freeSlots"] for n in nodes) == 0
    uuid = server.submit("true", instanceCount=3, poolUuid=pool, profile=None)
    task = _wait_state(server, uuid, "Success")
    assert {i["node"]["placementGroup"] for i in task["completedInstances"]} == \
        {group[0]["placement_group_id"]}
    assert server.post(f"/pools/{pool}/close").status_code == 200
    wait_for(lambda: not _groups(pool), 30, what="the placement group removed")
    nodes = server.client.get("/health").json()["nodes"]
    assert sum(n["heldSlots"] for n in nodes) == 0 and sum(n["freeSlots"] for n in nodes) == 2
    assert ray.util.placement_group_table()[group[0]["placement_group_id"]]["state"] == "REMOVED"


def test_a_pool_ray_cannot_place_says_so_and_closes(server):
    # two slots on nodes labelled zone=b: Ray has one such node, of one CPU
    pool = _pool(server, 2, hardwareConstraints=[ZONE_B])
    wait_for(lambda: _groups(pool), 30, what="the pool's placement group")
    uuid = server.submit("true", poolUuid=pool, profile=None)
    placing = _explain(server, uuid, "placing")
    waits = placing["instances"][0]
    assert waits["instanceId"] == 0 and waits["placementGroup"]["state"] == "PENDING"
    assert waits["placementGroup"]["bundles"] == 2 and waits["resources"] == {"CPU": 1.0}
    assert waits["placementGroup"]["schedulingState"] in ("INFEASIBLE", "NO_RESOURCES")
    assert waits["placementGroup"]["labelSelector"] == {"zone": "b"}
    assert "not placed" in placing["message"] and "zone=b" in placing["message"]
    assert waits["placementGroup"]["id"] in placing["message"]
    assert _instances(server, uuid)[0].state == "Dispatched"
    assert server.post(f"/pools/{pool}/close").status_code == 200  # cancels the task
    task = _wait_state(server, uuid, "Cancelled", timeout=30)
    assert task["errors"][0]["code"] == "pool_closed"
    wait_for(lambda: server.get(f"/pools/{pool}").json()["state"] == "Closed", 30)
    assert not _groups(pool) and not server.executor.running()


# -- an instance waiting for a node says what for ---------------------------------------------

def test_an_instance_waiting_for_its_full_node_is_explained_and_aborts_at_once(server):
    filler = server.submit("sleep 120", hardwareConstraints=[ZONE_B])
    _wait_state(server, filler, "FullyExecuting")
    waiting = server.submit("true", hardwareConstraints=[ZONE_B])
    placing = _explain(server, waiting, "placing")
    node_b = _node_ids()["b"]
    waits = placing["instances"][0]
    assert waits["labelSelector"] == {"zone": "b"} and waits["resources"] == {"CPU": 1.0}
    assert [(n["id"], n["freeSlots"]) for n in waits["nodes"]] == [(node_b, 0)]
    assert "zone=b" in placing["message"] and "0 of 1 slots free" in placing["message"]
    assert _instances(server, waiting)[0].state == "Dispatched"
    assert server.post(f"/tasks/{waiting}/abort").status_code == 200
    # Ray drops it from its queue at once: well before the backstop (grace 2 s + 5 s)
    ended = _wait_state(server, waiting, "Cancelled", timeout=5)
    assert ended["completedInstances"][0]["state"] == "Cancelled"
    assert server.post(f"/tasks/{filler}/abort").status_code == 200
    _wait_state(server, filler, "Cancelled", timeout=30)


# -- abort: softly, then forcibly -------------------------------------------------------------

def _command_lines() -> dict[int, bytes]:
    """This host's processes (a sandbox's too, by their host PIDs) and their command lines."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    found[int(entry.name)] = f.read()
            except OSError:
                pass
    return found


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ancestors(pid: int) -> list[tuple[int, str]]:
    chain = []
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                chain.append((pid, f.read().replace(b"\0", b" ").decode(errors="replace")))
        except OSError:
            break
    return chain


@pytest.mark.parametrize("frozen", [False, True], ids=["ignores-sigterm", "runner-frozen"])
def test_abort_ends_an_instance_that_ignores_sigterm(server, frozen):
    """The runner's own path: SIGTERM, then SIGKILL after the grace period (2 s here). With
    its Ray worker frozen (SIGSTOP), nothing on the node acts on the cancel: the backstop
    force-cancels the Ray task grace + 5 s after the abort."""
    marker = f"{300 + secrets.randbelow(10**6) / 10**7:.7f}"
    uuid = server.submit(f"sh -c \"trap '' TERM; sleep {marker}\"")
    _wait_state(server, uuid, "FullyExecuting")
    sleeping = f"sleep\0{marker}\0".encode()
    pids = wait_for(lambda: sleeping in (lines := _command_lines()).values() and
                    {pid for pid, line in lines.items() if marker.encode() in line}, 30,
                    what="the command's processes")
    worker = next(pid for pid, line in _ancestors(min(pids)) if line.startswith("ray::"))
    if frozen:
        os.kill(worker, signal.SIGSTOP)
    try:
        assert server.post(f"/tasks/{uuid}/abort").status_code == 200
        grace = server.client.app.state.ctx.settings.kill_grace_seconds
        bound = grace + (5 if frozen else 0) + 20  # the backstop's 5 s, and a margin
        task = _wait_state(server, uuid, "Cancelled", timeout=bound)
        wait_for(lambda: not any(map(_alive, pids)), bound, what="the command's processes gone")
    finally:
        if frozen and _alive(worker):
            os.kill(worker, signal.SIGCONT)
    assert task["completedInstances"][0]["state"] == "Cancelled"
    assert _alive(worker) is not frozen  # force-cancelled: Ray killed its worker
    assert not server.executor.running()
