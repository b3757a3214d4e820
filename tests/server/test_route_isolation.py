"""Isolation over every route: user B aims each route of the app at user A's objects.

The routes come from the app's own route table, and every one needs a case below: a route
added without one fails :func:`test_every_route_has_a_case`. For each case B gets the answer
the case expects (404 for A's tasks, pools, jobs, snapshots, outputs and secrets; 403 for the
owner's user management, whatever the email; 4xx for A's ids given in a body), B's answer
holds nothing of A's that B did not send, and A's view of all A's objects is the same after B's
call as before it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pytest
from sqlalchemy import func, select

from qcompute.server.db.models import OutputCursor, PoolOutputCursor
from qcompute.server.executors.base import Output

from .conftest import Cluster, serving, wait_for

COMMAND = [{"key": "DOCKER_CMD", "value": "sleep 100"}]
# What changes with the clock alone, not with what anyone does
VOLATILE = {"wallTime", "wallTimeSec", "executionTime", "executionTimeSec", "timestamp"}


@dataclass
class World:
    """A's objects (and the few of B's that cross-object cases need)."""

    owner: Cluster
    a: dict[str, str]  # A's headers
    b: dict[str, str]
    ids: dict[str, str]  # task, pool, job, snapshot, secret, folder, email; b_task, b_job

    def markers(self) -> set[str]:
        """What of A's must never appear in an answer to B (unless B sent it)."""
        keep = ("task", "pool", "job", "snapshot", "secret", "email", "value", "output",
                "task_name")
        return {self.ids[k] for k in keep}


@dataclass
class Case:
    """B's call on one route and the answer it must get."""

    status: int
    code: Optional[str] = None
    path: dict[str, str] = field(default_factory=dict)  # path parameter → key of World.ids
    body: Optional[Callable[[World], Any]] = None
    query: str = ""
    then: Optional[Callable[[World, Any], None]] = None  # more checks, and clean-up


def _task_doc(**fields) -> Callable[[World], dict]:
    return lambda w: {"name": "b", "profile": "docker-batch", "constants": COMMAND,
                      **{k: (v(w) if callable(v) else v) for k, v in fields.items()}}


A_TASK = {"uuid": "task"}
A_POOL = {"uuid": "pool"}
A_JOB = {"uuid": "job"}
TASK_404 = Case(404, "task_not_found", A_TASK)
POOL_404 = Case(404, "pool_not_found", A_POOL)
JOB_404 = Case(404, "job_not_found", A_JOB)
OWNER_ONLY = Case(403, "owner_only", {"email": "email"})
OWNER_ONLY_UNKNOWN = Case(403, "owner_only", {"email": "nobody"})  # the same: no oracle
LISTED = Case(200)  # B's own list: none of A's objects in it
PUBLIC = Case(200)  # the same for everyone


def _b_owns_its_secret(world: World, response) -> None:
    """B's PUT made B's own secret under the same key; A's is untouched (checked by the view)."""
    got = world.owner.client.get(f"/secrets-manager/data/{world.ids['secret']}",
                                 headers=world.b)
    assert got.json() == {"value": "bob's"}
    world.owner.client.delete(f"/secrets-manager/data/{world.ids['secret']}", headers=world.b)


def _nothing_of_a(world: World, response) -> None:
    assert response.json()["keys"] == []


CASES: dict[str, list[Case]] = {
    # public and catalogue routes
    "GET /openapi.json": [PUBLIC], "GET /docs": [PUBLIC],
    "GET /redoc": [PUBLIC], "GET /health": [PUBLIC], "GET /settings": [PUBLIC],
    "GET /versions": [PUBLIC], "GET /info": [PUBLIC], "GET /profiles": [PUBLIC],
    "GET /profiles/{name}": [Case(200, path={"name": "profile"})],  # shared, not owned
    "GET /hardware-constraints": [PUBLIC],
    "GET /hardware-constraints/cpu-model-constraints/search": [PUBLIC],
    # tasks
    "POST /tasks": [Case(400, "pool_not_found", body=_task_doc(poolUuid=lambda w: w.ids["pool"])),
                    Case(400, "job_not_found", body=_task_doc(jobUuid=lambda w: w.ids["job"])),
                    Case(400, "invalid_dependencies", body=_task_doc(
                        jobUuid=lambda w: w.ids["b_job"],
                        dependencies=lambda w: {"dependsOn": [w.ids["task"]]}))],
    "GET /tasks": [LISTED], "GET /tasks/summaries": [LISTED],
    "POST /tasks/paginate": [Case(200, body=lambda w: {})],
    "POST /tasks/summaries/paginate": [Case(200, body=lambda w: {})],
    "GET /tasks/{uuid}": [TASK_404, Case(404, "task_not_found", A_TASK, query="?wait=5")],
    "POST /tasks/wait": [Case(404, "task_not_found",
                              body=lambda w: {"uuids": [w.ids["task"]], "timeout": 5})],
    "PUT /tasks/{uuid}": [Case(404, "task_not_found", A_TASK,
                               body=lambda w: {"name": "renamed by b", "tags": ["b"]})],
    "PATCH /tasks/{uuid}": [TASK_404],
    "DELETE /tasks/{uuid}": [TASK_404],
    "POST /tasks/{uuid}/abort": [TASK_404],
    "GET /tasks/{uuid}/timeline": [TASK_404],
    "GET /tasks/{uuid}/explain": [TASK_404],
    "POST /tasks/{uuid}/snapshot/periodic": [Case(404, "task_not_found", A_TASK,
                                                  body=lambda w: {"interval": 60})],
    "POST /tasks/{uuid}/snapshot": [Case(404, "task_not_found", A_TASK, body=lambda w: {})],
    "GET /tasks/{uuid}/snapshot/{snapshot_id}": [
        Case(404, "task_not_found", {"uuid": "task", "snapshot_id": "snapshot"}),
        Case(404, "snapshot_not_found", {"uuid": "b_task", "snapshot_id": "snapshot"})],
    # user management: the owner's alone
    "GET /admin/users": [Case(403, "owner_only")],
    "GET /metrics": [Case(403, "owner_only")],
    "POST /admin/users": [Case(403, "owner_only", body=lambda w: {"email": "eve@example.com"})],
    "POST /admin/users/{email}/token": [OWNER_ONLY, OWNER_ONLY_UNKNOWN],
    "DELETE /admin/users/{email}": [OWNER_ONLY, OWNER_ONLY_UNKNOWN,
                                    Case(403, "owner_only", {"email": "email"},
                                         query="?force=true")],
    # secrets: keys are per user
    "GET /secrets-manager/data/{key:path}": [Case(404, "secret_not_found", {"key": "secret"})],
    "PUT /secrets-manager/data/{key:path}": [Case(201, path={"key": "secret"},
                                                  body=lambda w: {"value": "bob's"},
                                                  then=_b_owns_its_secret)],
    "PATCH /secrets-manager/data/{key:path}": [Case(404, "secret_not_found", {"key": "secret"},
                                                    body=lambda w: {"value": "bob's"})],
    "DELETE /secrets-manager/data/{key:path}": [Case(404, "secret_not_found",
                                                     {"key": "secret"})],
    "GET /secrets-manager/search": [Case(200, then=_nothing_of_a)],
    "GET /secrets-manager/search/{prefix:path}": [Case(200, path={"prefix": "folder"},
                                                       then=_nothing_of_a)],
    # pools
    "POST /pools": [Case(201, body=lambda w: {"name": "b", "profile": "docker-batch"},
                         then=lambda w, r: w.owner.client.delete(f"/pools/{r.json()['uuid']}",
                                                                 headers=w.b))],
    "GET /pools": [LISTED], "GET /pools/summaries": [LISTED],
    "POST /pools/paginate": [Case(200, body=lambda w: {})],
    "POST /pools/summaries/paginate": [Case(200, body=lambda w: {})],
    "GET /pools/{uuid}": [POOL_404],
    "PUT /pools/{uuid}": [Case(404, "pool_not_found", A_POOL,
                               body=lambda w: {"name": "renamed by b"})],
    "PATCH /pools/{uuid}": [POOL_404],
    "POST /pools/{uuid}/close": [POOL_404],
    "DELETE /pools/{uuid}": [POOL_404],
    # jobs
    "POST /jobs": [Case(400, "pool_not_found",
                        body=lambda w: {"name": "b", "poolUuid": w.ids["pool"]})],
    "POST /jobs/": [Case(400, "pool_not_found",
                         body=lambda w: {"name": "b", "poolUuid": w.ids["pool"]})],
    "GET /jobs": [LISTED],
    "POST /jobs/paginate": [Case(200, body=lambda w: {})],
    "GET /jobs/{uuid}": [JOB_404], "GET /jobs/{uuid}/tasks": [JOB_404],
    "POST /jobs/{uuid}/terminate": [JOB_404],
    "DELETE /jobs/{uuid}": [JOB_404, Case(404, "job_not_found", A_JOB, query="?force=true")],
    # outputs: the whole object's stream, and one instance's (or pool slot's)
    **{f"{method} /{kind}s/{{uuid}}/{stream}{tail}": [
        Case(404, f"{kind}_not_found", {"uuid": kind, "instance_id": "zero"})]
       for method in ("GET", "POST") for kind in ("task", "pool")
       for stream in ("stdout", "stderr") for tail in ("", "/{instance_id}")},
}


def route_table(app) -> list[str]:
    """``"METHOD /path"`` of every route the app serves (HEAD rides along with GET)."""
    try:  # FastAPI ≥ 0.120 keeps included routers whole; this walks into them
        from fastapi.routing import iter_route_contexts
        routes = list(iter_route_contexts(app.routes))
    except ImportError:
        routes = app.routes
    # The console's routes sign in by cookie, not by token: tests/console/test_isolation.py
    return sorted({f"{method} {route.path}" for route in routes
                   for method in getattr(route, "methods", None) or () if method != "HEAD"
                   and not route.path.startswith("/console")})


def _calls() -> list[tuple[str, int]]:
    return [(route, n) for route, cases in CASES.items() for n in range(len(cases))]


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def a_view(world: World) -> dict[str, Any]:
    """All that A (and the owner, of A's account) can see of A's objects."""
    ids, client = world.ids, world.owner.client

    def get(path: str) -> Any:
        response = client.get(path, headers=world.a)
        assert response.status_code == 200, (path, response.text)
        return _stable(response.json()) if "json" in response.headers["content-type"] \
            else response.text

    with client.app.state.ctx.sessions() as session:
        cursors = [session.scalar(select(func.count()).select_from(table))
                   for table in (OutputCursor, PoolOutputCursor)]
    users = world.owner.get("/admin/users").json()
    return {
        "task": get(f"/tasks/{ids['task']}"), "pool": get(f"/pools/{ids['pool']}"),
        "job": get(f"/jobs/{ids['job']}"), "job tasks": get(f"/jobs/{ids['job']}/tasks"),
        "snapshot": get(f"/tasks/{ids['task']}/snapshot/{ids['snapshot']}"),
        "task stdout": get(f"/tasks/{ids['task']}/stdout"),
        "pool stdout": get(f"/pools/{ids['pool']}/stdout/0"),
        "secret": get(f"/secrets-manager/data/{ids['secret']}"),
        "secret keys": get(f"/secrets-manager/search/{ids['folder']}"),
        "tasks": get("/tasks"), "pools": get("/pools"), "jobs": get("/jobs"),
        "info": get("/info"), "fresh-read cursors": cursors,
        "account": [u for u in users if u["email"] == ids["email"]],
    }


def _add_user(owner: Cluster, email: str) -> tuple[dict[str, str], str]:
    response = owner.post("/admin/users", json={"email": email})
    assert response.status_code == 201, response.text
    return {"Authorization": response.json()["token"]}, response.json()["bucketPrefix"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, module_database_url):
    with serving(tmp_path_factory.mktemp("isolation"), capacity=4,
                 scheduler_tick_seconds=0.05) as owner:
        (a, prefix), (b, _) = (_add_user(owner, "alice@example.com"),
                               _add_user(owner, "bob@example.com"))
        client = owner.client

        def post(path: str, headers: dict, json: Any) -> dict:
            response = client.post(path, headers=headers, json=json)
            assert response.status_code in (200, 201), response.text
            return response.json()

        pool = post("/pools", a, {"name": "alice-pool", "profile": "docker-batch",
                                  "instanceCount": 1,
                                  "preparationTask": {"commandLine": "echo prep"}})["uuid"]
        owner.executor.run(owner.wait_dispatched(pool, 1)[0], stdout="alice-pool-prep\n")
        job = post("/jobs", a, {"name": "alice-job"})["uuid"]
        task = post("/tasks", a, {"name": "alice-task-name", "profile": "docker-batch",
                                  "constants": COMMAND, "instanceCount": 2,
                                  "resultBucket": f"{prefix}results"})["uuid"]
        keys = owner.wait_dispatched(task, 2)
        for key in keys:
            owner.executor.start(key)
        owner.executor.on_event(Output(keys[0], "stdout", "alice-output-line\n"))
        snapshot = post(f"/tasks/{task}/snapshot", a, {})["id"]
        response = client.put("/secrets-manager/data/alice-only/db", headers=a,
                              json={"value": "alice-password"})
        assert response.status_code == 201, response.text
        b_job = post("/jobs", b, {"name": "bob-job", "useDependencies": True})["uuid"]
        b_task = post("/tasks", b, {"name": "bob-task", "profile": "docker-batch",
                                    "constants": COMMAND})["uuid"]
        world = World(owner, a, b, {
            "task": task, "pool": pool, "job": job, "snapshot": snapshot,
            "secret": "alice-only/db", "folder": "alice-only", "value": "alice-password",
            "email": "alice@example.com", "output": "alice-output-line",
            "task_name": "alice-task-name", "b_task": b_task, "b_job": b_job,
            "nobody": "nobody@example.com", "profile": "docker-batch", "zero": "0"})
        # settled: A's view no longer moves by itself (else "unchanged" would prove nothing)
        wait_for(lambda: "alice-output-line" in a_view(world)["task stdout"]
                 and a_view(world)["pool"]["state"] == "FullyExecuting"
                 and a_view(world)["snapshot"]["status"] == "InProgress")
        assert a_view(world) == a_view(world)
        yield world


def test_every_route_has_a_case(world):
    table = route_table(world.owner.client.app)
    assert len(table) > 60
    assert sorted(set(table) - CASES.keys()) == [], "routes without an isolation case"
    assert sorted(CASES.keys() - set(table)) == [], "cases for routes the app no longer has"


@pytest.mark.parametrize("route,n", _calls(), ids=[f"{r}#{n}" for r, n in _calls()])
def test_b_cannot_reach_a(world, route, n):
    case = CASES[route][n]
    method, template = route.split(" ", 1)
    path = re.sub(r"\{(\w+)(:path)?\}", lambda m: world.ids[case.path[m.group(1)]], template)
    body = case.body(world) if case.body else None
    before = a_view(world)

    response = world.owner.client.request(method, path + case.query, headers=world.b,
                                          json=body)

    assert response.status_code == case.status, response.text
    if case.code:
        assert response.json()["code"] == case.code, response.text
    sent = f"{path} {body}"
    leaked = {m for m in world.markers() if m in response.text and m not in sent}
    assert not leaked, f"B's answer holds A's {leaked}"
    if case.then:
        case.then(world, response)
    assert a_view(world) == before
