"""Bad input is refused at the door: each refused input gets its status, its code and a
message naming the field, and leaves no row behind. Inputs at the limits still pass.

One cluster serves the module, with small configurable limits so that they are cheap to reach.
"""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import func, select

from qcompute.server.db.models import Base, Pool
from qcompute.server.schemas.common import MAX_SPAN
from qcompute.server.schemas.tasks import (ARG_STRLEN, MAX_FILTER_DEPTH, MAX_FILTER_LEAVES,
                                           MAX_FILTER_VALUES)
from qcompute.server.services.lifecycle import MAX_RANGE_PARTS
from qcompute.server.services.pools import completion_deadline, elastic_of

from .conftest import serving

LIMITS = dict(max_request_bytes=2 * 1024 * 1024, max_constants=20, max_constant_bytes=4096,
              max_environment_bytes=64 * 1024, max_instances_per_task=20_000)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, module_database_url):
    """The module's cluster; its first task runs (snapshots and outputs need one), before
    the tasks of the tests fill the other slots."""
    with serving(tmp_path_factory.mktemp("limits"), capacity=4, **LIMITS) as cluster:
        uuid = cluster.submit("sleep 100", resultBucket="results-bucket")
        (key,) = cluster.wait_dispatched(uuid, 1)
        cluster.executor.start(key)
        cluster.wait_state(uuid, "FullyExecuting")
        cluster.running = uuid
        yield cluster


@pytest.fixture
def running(cluster) -> str:
    return cluster.running


def rows(cluster) -> dict[str, int]:
    """How many rows each table holds."""
    with cluster.client.app.state.ctx.sessions() as session:
        return {t.name: session.scalar(select(func.count()).select_from(t))
                for t in Base.metadata.sorted_tables}


def refused(cluster, method: str, path: str, status: int, code: str, *fragments: str,
            **kw) -> dict:
    """Send a request that must be refused; check the answer and that nothing was stored."""
    before = rows(cluster)
    response = cluster.client.request(method, path,
                                      headers={**cluster.headers, **kw.pop("headers", {})}, **kw)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    for fragment in fragments:
        assert fragment in body["message"], body
    assert rows(cluster) == before
    return body


def task(**fields) -> dict:
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": "echo hi"}]}
    return {**doc, **fields}


def constants(*pairs: tuple[str, str]) -> list[dict]:
    return [{"key": "DOCKER_CMD", "value": "echo hi"},
            *({"key": k, "value": v} for k, v in pairs)]


# -- tasks ----------------------------------------------------------------------------------

TASKS = {
    "NUL in the name": (task(name="a\x00b"), "name: contains a NUL"),
    "blank name": (task(name="   "), "name: cannot be empty"),
    "NUL in a tag": (task(tags=["ok", "b\x00"]), "tags[1]: contains a NUL"),
    "NUL in a label": (task(labels={"k": "v\x00"}), "labels.k: contains a NUL"),
    "NUL in a constant key": (task(constants=constants(("A\x00", "x"))),
                              "constants[1].key: contains a NUL"),
    "NUL in a constant value": (task(constants=constants(("A", "x\x00y"))),
                                "constants[1].value: contains a NUL"),
    "'=' in a constant key": (task(constants=constants(("A=B", "x"))),
                              "constants[1].key:", "contains '='"),
    "empty constant key": (task(constants=constants(("", "x"))), "constants[1].key:"),
    "a constant no process can take": (
        task(constants=constants(("BIG", "x" * ARG_STRLEN))), "constants[1]:",
        "MAX_ARG_STRLEN"),
    "maxTimeQueueSeconds past 10 years": (task(maxTimeQueueSeconds=10**20),
                                          "maxTimeQueueSeconds:"),
    "completionTimeToLive that overflows a datetime": (
        task(completionTimeToLive="999999999.00:00:00", autoDeleteOnCompletion=True),
        "completionTimeToLive:", "longer than 3650 days"),
    "completionTimeToLive that overflows a timedelta": (
        task(completionTimeToLive="99999999999.00:00:00"), "completionTimeToLive:"),
    "instanceCount past 32 bits": (task(instanceCount=10**30), "instanceCount:"),
    "retries past the bound": (task(retrySettings={"maxTotalRetries": 10**30}),
                               "retrySettings.maxTotalRetries:"),
    "cacheTTLSec past 10 years": (
        task(advancedResourceBuckets=[{"bucketName": "in-bucket", "cacheTTLSec": 10**20}]),
        "advancedResourceBuckets[0].cacheTTLSec:"),
    "1,001 tags": (task(tags=[f"t{n}" for n in range(1001)]), "tags:"),
    "a huge whitelist": (task(resultsWhitelist="a" * 5000), "resultsWhitelist:"),
}


@pytest.mark.parametrize("doc,fragments", [(d, f) for d, *f in TASKS.values()], ids=list(TASKS))
def test_a_bad_task_field_is_refused_naming_it(cluster, doc, fragments):
    refused(cluster, "POST", "/tasks", 400, "invalid_task", *fragments, json=doc)


RANGES = {
    f"{MAX_RANGE_PARTS + 1} parts": ",".join(str(2 * n) for n in range(MAX_RANGE_PARTS + 1)),
    "an id past 64 bits": str(2**63),
    "an id past 32 bits": "2147483648",
    "5,000 digits": "9" * 5000,
    "more instances than the server's limit": "0-20000",
    "not a range": "1-2-3",
}


@pytest.mark.parametrize("text", list(RANGES.values()), ids=list(RANGES))
def test_a_bad_advanced_range_is_refused(cluster, text):
    refused(cluster, "POST", "/tasks", 400, "invalid_range", "advancedRanges:",
            json=task(advancedRanges=text))


def test_constants_past_the_servers_limits_are_refused(cluster):
    many = [(f"C{n}", "x") for n in range(LIMITS["max_constants"] + 1)]
    refused(cluster, "POST", "/tasks", 400, "too_many_constants", "max_constants",
            json=task(constants=constants(*many)))
    refused(cluster, "POST", "/tasks", 400, "constant_too_large", "constants[2] (B)",
            "max_constant_bytes", json=task(constants=constants(("A", "a"), ("B", "b" * 4095))))
    wide = [(f"C{n}", "x" * 4000) for n in range(17)]  # each fits; together 68 KB
    refused(cluster, "POST", "/tasks", 400, "environment_too_large", "max_environment_bytes",
            json=task(constants=constants(*wide)))
    # ${NAME} expanded: each constant is small, the command's one word is not
    refused(cluster, "POST", "/tasks", 400, "command_too_large", "DOCKER_CMD: word 1",
            json=task(constants=[{"key": "A", "value": "a" * 4000},
                                 {"key": "DOCKER_CMD", "value": "echo " + "${A}" * 40}]))


@pytest.mark.parametrize("constraint", [
    {"discriminator": "MaximumCoreHardwareConstraint", "coreCount": 10**30},
    {"discriminator": "MaximumRamHardwareConstraint", "maximumMemoryMB": 1e300},
])
def test_a_hardware_constraint_out_of_range_is_refused(cluster, constraint):
    refused(cluster, "POST", "/tasks", 400, "invalid_hardware_constraint",
            json=task(hardwareConstraints=[constraint]))


def test_a_bulk_keeps_the_good_tasks_and_refuses_the_bad_one(cluster):
    before = rows(cluster)["tasks"]
    response = cluster.post("/tasks", json=[task(), task(constants=constants(("X=", "1")))])
    assert response.status_code == 200, response.text
    good, bad = response.json()
    assert good["statusCode"] == 201 and bad["statusCode"] == 400
    assert "constants[1].key" in bad["message"]
    assert rows(cluster)["tasks"] == before + 1


def test_inputs_at_the_limits_pass(cluster):
    at_most = [(f"C{n}", "x" * 3000) for n in range(LIMITS["max_constants"] - 1)][:15]
    for doc in (
        task(constants=constants(("A", "a" * (4096 - 2)))),  # "A=" + value: 4096 bytes
        task(constants=constants(*at_most)),
        task(advancedRanges=",".join(str(2 * n) for n in range(MAX_RANGE_PARTS))),
        task(advancedRanges="2147483640-2147483647"),
        task(completionTimeToLive=f"{MAX_SPAN.days}.00:00:00", maxTimeQueueSeconds=86400 * 3650),
        task(name="x" * 512, tags=[f"t{n}" for n in range(1000)]),
    ):
        response = cluster.post("/tasks", json=doc)
        assert response.status_code == 201, response.text


# -- pools, jobs, secrets, users --------------------------------------------------------------

def pool(**fields) -> dict:
    return {"name": "p", "profile": "docker-batch", **fields}


POOLS = {
    "completionTimeToLive past 10 years": (pool(completionTimeToLive="9999999999.00:00:00"),
                                           "completionTimeToLive:"),
    "elastic sizes past the bound": (
        pool(elasticProperty={"isElastic": True, "maxTotalSlots": 10**30}),
        "elasticProperty.maxTotalSlots:"),
    "resizePeriod past 10 years": (
        pool(elasticProperty={"isElastic": True, "resizePeriod": 10**12}),
        "elasticProperty.resizePeriod:"),
    "NUL in the preparation command": (pool(preparationTask={"commandLine": "echo \x00"}),
                                       "preparationTask.commandLine: contains a NUL"),
    "'=' in a constant key": (pool(constants=[{"key": "A=", "value": "1"}]),
                              "constants[0].key:"),
    "maxTimeQueueSeconds past 10 years": (pool(maxTimeQueueSeconds=10**20),
                                          "maxTimeQueueSeconds:"),
}


@pytest.mark.parametrize("doc,fragments", [(d, f) for d, *f in POOLS.values()], ids=list(POOLS))
def test_a_bad_pool_field_is_refused_naming_it(cluster, doc, fragments):
    refused(cluster, "POST", "/pools", 400, "invalid_pool", *fragments, json=doc)


def test_pool_constants_past_the_servers_limits_are_refused(cluster):
    many = [{"key": f"C{n}", "value": "x"} for n in range(LIMITS["max_constants"] + 1)]
    refused(cluster, "POST", "/pools", 400, "too_many_constants", json=pool(constants=many))
    refused(cluster, "POST", "/pools", 400, "command_too_large", "preparationTask.commandLine",
            json=pool(constants=[{"key": "A", "value": "a" * 4000}],
                      preparationTask={"commandLine": "echo " + "${A}" * 40}))


@pytest.mark.parametrize("doc,fragment", [
    ({"name": "j", "maxWallTime": "999999999.00:00:00"}, "maxWallTime:"),
    ({"name": "j", "completionTimeToLive": "99999999999.00:00:00"}, "completionTimeToLive:"),
    ({"name": "j\x00"}, "name: contains a NUL"),
    ({"name": "j", "poolUuid": "x" * 100}, "poolUuid:"),
], ids=["maxWallTime", "completionTimeToLive", "NUL name", "poolUuid"])
def test_a_bad_job_field_is_refused_naming_it(cluster, doc, fragment):
    refused(cluster, "POST", "/jobs", 400, "invalid_job", fragment, json=doc)


def test_bad_secrets_and_users_are_refused(cluster):
    refused(cluster, "PUT", "/secrets-manager/data/db/password", 400, "invalid_secret_value",
            "NUL", json={"Value": "a\x00b"})
    refused(cluster, "PUT", "/secrets-manager/data/db%00x", 400, "invalid_secret_key",
            json={"Value": "v"})
    refused(cluster, "POST", "/admin/users", 400, "invalid_user", "email",
            json={"email": "a\x00b@example.com"})


# -- snapshots, outputs, waits ----------------------------------------------------------------

def test_bad_snapshot_requests_are_refused(cluster, running):
    refused(cluster, "POST", f"/tasks/{running}/snapshot/periodic", 400, "invalid_snapshot",
            "interval:", json={"interval": 10**30})
    long_prefix = "é" * 512  # 1024 bytes: no room left for a file name under S3's limit
    refused(cluster, "POST", f"/tasks/{running}/snapshot", 400, "invalid_snapshot",
            "bucketPrefix:", "1024 bytes", json={"bucketPrefix": long_prefix})
    refused(cluster, "POST", f"/tasks/{running}/snapshot", 400, "invalid_snapshot",
            "bucketPrefix: contains a NUL", json={"bucketPrefix": "a\x00"})
    ok = cluster.post(f"/tasks/{running}/snapshot", json={"bucketPrefix": "é" * 511})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("method,instance", [("GET", 2**64), ("POST", -(2**70)),
                                             ("GET", 2**31)])
def test_an_instance_id_out_of_range_is_refused(cluster, running, method, instance):
    refused(cluster, method, f"/tasks/{running}/stdout/{instance}", 400, "invalid_request",
            "instance_id")


@pytest.mark.parametrize("uuid", ["a%00b", "x" * 100])
def test_an_id_no_object_can_have_is_not_found(cluster, uuid):
    for path in (f"/tasks/{uuid}", f"/pools/{uuid}", f"/jobs/{uuid}"):
        response = cluster.get(path)
        assert response.status_code == 404, response.text
        assert response.json()["code"].endswith("_not_found")


def test_a_wait_with_an_infinite_timeout_is_refused(cluster, running):
    refused(cluster, "POST", "/tasks/wait", 400, "invalid_wait_request", "timeout:",
            content=b'{"uuids": ["%s"], "timeout": Infinity}' % running.encode())


# -- listings ---------------------------------------------------------------------------------

def leaf(value="x", field="Name", operator="Equal") -> dict:
    return {"operator": operator, "field": field, "value": value}


def nested(depth: int) -> dict:
    node = leaf()
    for _ in range(depth):
        node = {"operator": "And", "filters": [node]}
    return node


PAGES = {
    "a 5,000-digit token": ({"token": "9" * 5000}, "token:"),
    "a token past 64 bits": ({"token": str(2**63)}, "token:"),
    "a negative token": ({"token": "-1"}, "token:"),
    "a token of non-ASCII digits": ({"token": "٣"}, "token:"),
    "an Or of 10,000 leaves": ({"filter": {"operator": "Or",
                                           "filters": [leaf(str(n)) for n in range(10_000)]}},
                               f"more than {MAX_FILTER_LEAVES} comparisons"),
    "a filter too deep": ({"filter": nested(MAX_FILTER_DEPTH + 1)}, "levels deep"),
    "an In of too many values": ({"filter": leaf(list(range(MAX_FILTER_VALUES + 1)),
                                                 operator="In")}, "value has more than"),
    "a huge Like pattern": ({"filter": leaf("%" * 60_000, operator="Like")},
                            "longer than 1024"),
    "a NUL in a value": ({"filter": leaf(["a", "b\x00"], operator="In")}, "NUL"),
}


@pytest.mark.parametrize("kind", ["tasks", "tasks/summaries", "pools", "jobs"])
@pytest.mark.parametrize("body,fragment", list(PAGES.values()), ids=list(PAGES))
def test_a_bad_page_request_is_refused(cluster, kind, body, fragment):
    refused(cluster, "POST", f"/{kind}/paginate", 400, "invalid_page_request", fragment,
            json=body)


def test_filters_at_the_limits_run(cluster):
    uuid = cluster.submit(tags=["tag-7"])
    widest = {"operator": "Or", "filters": [leaf(f"tag-{n}", "Tags")
                                            for n in range(MAX_FILTER_LEAVES)]}
    values = leaf([f"tag-{n}" for n in range(MAX_FILTER_VALUES)], "Tags", "In")
    for body in ({"filter": widest}, {"filter": values}, {"filter": nested(MAX_FILTER_DEPTH)},
                 {"token": str(2**63 - 1)}):
        response = cluster.post("/tasks/paginate", json=body)
        assert response.status_code == 200, response.text
    found = cluster.post("/tasks/paginate", json={"filter": widest}).json()["data"]
    assert [t["uuid"] for t in found] == [uuid]
    response = cluster.get("/tasks", params={"tag": [f"tag-{n}" for n in range(1001)]})
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"


# -- bodies -----------------------------------------------------------------------------------

def test_json_nested_too_deep_is_refused_before_it_is_parsed(cluster):
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000):
        refused(cluster, "POST", "/tasks", 400, "json_too_deep", "levels deep", content=body,
                headers={"Idempotency-Key": "deep"})
    deep = task(extra=nested(45))  # 92 levels: passes, and is stored and echoed back
    response = cluster.post("/tasks", json=deep, headers={"Idempotency-Key": "deep-ok"})
    assert response.status_code == 201, response.text
    assert cluster.task(response.json()["uuid"])["extra"] == deep["extra"]


def test_a_body_that_is_not_utf8_is_refused(cluster):
    refused(cluster, "POST", "/tasks", 400, "invalid_json", "UTF-8",
            content=b'{"name": "\xff"}')


def test_a_body_past_the_limit_gets_413(cluster):
    big = b'{"name": "' + b"x" * LIMITS["max_request_bytes"] + b'"}'
    body = refused(cluster, "POST", "/tasks", 413, "request_too_large", "max_request_bytes",
                   content=big)
    assert str(LIMITS["max_request_bytes"]) in body["message"]

    def chunks():  # no Content-Length: counted as it streams, refused once past the limit
        for _ in range(LIMITS["max_request_bytes"] // 65536 + 2):
            yield b" " * 65536
    refused(cluster, "POST", "/tasks", 413, "request_too_large", content=chunks())
    assert cluster.post("/tasks", json=task()).status_code == 201  # the next request is fine


# -- what was stored before these checks --------------------------------------------------------

def test_spans_and_sizes_stored_before_the_checks_do_not_break_the_scheduler():
    now = datetime(2026, 1, 1)
    legacy = {"autoDeleteOnCompletion": True, "completionTimeToLive": "999999999.00:00:00"}
    assert completion_deadline(legacy, now) == now + MAX_SPAN
    elastic = {"elasticProperty": {"isElastic": True, "maxTotalSlots": 10**30,
                                   "resizePeriod": 10**30}}
    prop = elastic_of(Pool(document=elastic))
    assert prop is not None and prop.max_total_slots == 10**30
