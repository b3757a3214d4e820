"""Pool: submission document, elastic settings pushed by commit, actions, output, wait, listing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import responses

from qcompute import (
    Bucket,
    Connection,
    ElasticProperty,
    Error,
    FieldError,
    MinimumCoreHardware,
    MissingBucketException,
    MissingPoolException,
    MissingPoolInstanceException,
    Pool,
    PoolState,
    Privileges,
    ReadOnlyFieldError,
    ResourceStateError,
    RetrySettings,
    SecretsAccessRights,
)

from .conftest import FakeClock
from .helpers import API, POOL_UUID, FakeStorage, body, pool_doc

POOL_URL = f"{API}/pools/{POOL_UUID}"
DEFAULT_ELASTIC = {"isElastic": False, "minTotalSlots": 0, "maxTotalSlots": 1, "minIdleSlots": 0,
                   "resizePeriod": 90, "rampResizeFactor": 1, "minIdleTimeSeconds": 0}


def submitted(api: responses.RequestsMock, conn: Connection, **doc: Any) -> Pool:
    api.add("GET", POOL_URL, json=pool_doc(**doc))
    pool = conn.retrieve_pool(POOL_UUID)
    api.calls.reset()
    return pool


# ----------------------------------------------------------------------------- submit
def test_static_pool_submit_sends_the_document_then_loads(api: responses.RequestsMock,
                                                          conn: Connection) -> None:
    pool = conn.create_pool("render-pool", "docker-batch", 2, shortname="rp")
    assert pool.state == PoolState.UNSUBMITTED and pool.uuid is None
    api.add("POST", f"{API}/pools", status=201, json={"uuid": POOL_UUID})
    api.add("GET", POOL_URL, json=pool_doc())
    assert pool.submit() is pool
    assert [(c.request.method, c.request.url) for c in api.calls] == [
        ("POST", f"{API}/pools"), ("GET", POOL_URL)]
    assert "Idempotency-Key" in api.calls[0].request.headers
    assert body(api.calls[0]) == {
        "name": "render-pool", "shortname": "rp", "profile": "docker-batch",
        "instanceCount": 2, "constants": [], "tags": [], "labels": {},
        "advancedResourceBuckets": [], "elasticProperty": DEFAULT_ELASTIC,
    }
    assert pool.uuid == POOL_UUID and pool.state == PoolState.SUBMITTED
    assert pool.creation_date == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


def test_elastic_pool_and_every_option_in_the_document(api: responses.RequestsMock,
                                                       conn: Connection) -> None:
    pool = conn.create_elastic_pool("el", "docker-batch", minimum_total_slots=1,
                                    maximum_total_slots=8, minimum_idle_slots=2,
                                    minimum_idle_time_seconds=30, resize_factor=0.5,
                                    resize_period=60)
    pool.constants["SETUP"] = "1"
    pool.labels = {"team": "x"}
    pool.tags = ["t"]
    pool.resources = [Bucket(conn, "in", create=False).with_filtering("data/")]
    pool.preparation_task = "pip install numpy"
    pool.multi_slots = 4
    pool.task_default_wait_for_pool_resources_synchronization = True
    pool.default_retry_settings = RetrySettings(max_total_retries=3)
    pool.hardware_constraints = [MinimumCoreHardware(8)]
    pool.secrets_access_rights = SecretsAccessRights().add_secret_by_key("db/pwd")
    pool.allow_credentials_to_be_exported_to_pool_environment()
    pool.auto_delete = True
    pool.completion_ttl = timedelta(hours=2)
    pool.max_time_queue_seconds = 600
    api.add("POST", f"{API}/pools", status=201, json={"uuid": POOL_UUID})
    api.add("GET", POOL_URL, json=pool_doc())
    pool.submit()
    assert body(api.calls[0]) == {
        "name": "el", "profile": "docker-batch", "instanceCount": 1,
        "constants": [{"key": "SETUP", "value": "1"}], "tags": ["t"], "labels": {"team": "x"},
        "advancedResourceBuckets": [{"bucketName": "in", "filtering": {"prefixFiltering": {
            "prefix": "data/"}}, "cacheTTLSec": None}],
        "elasticProperty": {"isElastic": True, "minTotalSlots": 1, "maxTotalSlots": 8,
                            "minIdleSlots": 2, "resizePeriod": 60, "rampResizeFactor": 0.5,
                            "minIdleTimeSeconds": 30},
        "preparationTask": {"commandLine": "pip install numpy"},
        "multiSlotsSettings": {"slotsPerNode": 4},
        "taskDefaultWaitForPoolResourcesSynchronization": True,
        "defaultRetrySettings": {"maxTotalRetries": 3, "maxPerInstanceRetries": None},
        "hardwareConstraints": [{"discriminator": "MinimumCoreHardwareConstraint",
                                 "coreCount": 8}],
        "secretsAccessRights": {"bySecret": [{"key": "db/pwd"}], "byPrefix": []},
        "privileges": {"exportApiAndStorageCredentialsInEnvironment": True},
        "autoDeleteOnCompletion": True, "completionTimeToLive": "0.02:00:00",
        "maxTimeQueueSeconds": 600,
    }


def test_submit_errors(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", f"{API}/pools", status=404, json={"message": "bucket in not found"})
    with pytest.raises(MissingBucketException, match="bucket in not found"):
        conn.create_pool("p", "docker-batch").submit()
    pool = submitted(api, conn)
    with pytest.raises(ResourceStateError, match="already submitted"):
        pool.submit()


@pytest.mark.parametrize("kwargs, error", [
    ({"resize_factor": 0}, "resize_factor"), ({"resize_factor": 1.5}, "resize_factor"),
    ({"minimum_total_slots": 3, "maximum_total_slots": 2}, "above maximum_total_slots"),
    ({"minimum_idle_slots": -1}, "minimum_idle_slots"),
])
def test_elastic_settings_are_checked(conn: Connection, kwargs: dict[str, Any],
                                      error: str) -> None:
    with pytest.raises(FieldError, match=error):
        conn.create_pool("p", "docker-batch").setup_elastic(**kwargs)


def test_read_only_and_volatile_fields_are_parsed(api: responses.RequestsMock,
                                                  conn: Connection) -> None:
    pool = submitted(
        api, conn, state="FullyExecuting", previousState="FullyDispatched",
        runningInstanceCount=2, runningCoreCount=16, poolUsage=0.5, totalSlotCapacity=8,
        queuedOrRunningTaskInstancesCount=3.0, preparationTask={"commandLine": "setup.sh"},
        multiSlotsSettings={"slotsPerNode": 4},
        elasticProperty={"isElastic": True, "minTotalSlots": 1, "maxTotalSlots": 4,
                         "minIdleSlots": 0, "resizePeriod": 90, "rampResizeFactor": 1,
                         "minIdleTimeSeconds": 10},
        errors=[{"code": "E", "message": "node lost", "debug": None}],
        status={"executionProgress": 0, "executionTimeByCpuModel": [],
                "executionTimeGhzByCpuModel": []},
        stateTransitionTime="2026-11-21T10:01:00Z", completionTimeToLive="1.00:00:00")
    assert pool.state == PoolState.FULLY_EXECUTING
    assert pool.previous_state == PoolState.FULLY_DISPATCHED
    assert (pool.running_instance_count, pool.running_core_count) == (2, 16)
    assert (pool.pool_usage, pool.total_slot_capacity) == (0.5, 8)
    assert pool.queued_or_running_task_instances_count == 3.0
    assert (pool.preparation_task, pool.multi_slots) == ("setup.sh", 4)
    assert pool.is_elastic and pool.elastic_maximum_total_slots == 4
    assert pool.elastic_minimum_idle_time == 10
    assert pool.errors == [Error("E", "node lost", None)]
    assert pool.status is not None and pool.status.execution_progress == 0
    assert pool.state_transition_time == datetime(2026, 11, 21, 10, 1, tzinfo=timezone.utc)
    assert pool.completion_ttl == timedelta(days=1)
    assert pool.resources == [] and pool.hardware_constraints == []
    assert len(api.calls) == 0


def test_unknown_state_is_kept_as_text(api: responses.RequestsMock, conn: Connection) -> None:
    assert submitted(api, conn, state="Hibernating").state == "Hibernating"


# ----------------------------------------------------------------------------- commit
def test_commit_sends_the_document_with_the_elastic_change(api: responses.RequestsMock,
                                                           conn: Connection) -> None:
    pool = submitted(api, conn)
    pool.commit()
    assert len(api.calls) == 0  # nothing changed: no request
    pool.setup_elastic(minimum_total_slots=1, maximum_total_slots=10)
    pool.elastic_minimum_idle_slots = 2
    pool.tags.append("q")
    api.add("PUT", POOL_URL)
    assert pool.commit() is pool
    sent = body(api.calls[0])
    assert sent == pool_doc(
        tags=["p", "q"],
        elasticProperty={"isElastic": True, "minTotalSlots": 1, "maxTotalSlots": 10,
                         "minIdleSlots": 2, "resizePeriod": 90, "rampResizeFactor": 1,
                         "minIdleTimeSeconds": 0})
    assert sent["completionTimeToLive"] == "00:00:00"  # unchanged fields keep the server's form
    pool.commit()
    assert len(api.calls) == 1


def test_elastic_attribute_assignment_is_checked_and_committed(api: responses.RequestsMock,
                                                               conn: Connection) -> None:
    pool = submitted(api, conn)
    with pytest.raises(FieldError, match="resize_factor"):
        pool.elastic_resize_factor = 2
    pool.elastic_maximum_total_slots = 5
    api.add("PUT", POOL_URL)
    pool.commit()
    assert body(api.calls[0])["elasticProperty"]["maxTotalSlots"] == 5
    assert pool.elastic_property == ElasticProperty(maximum_total_slots=5)


def test_pool_defaults_can_change_on_a_running_pool(api: responses.RequestsMock,
                                                    conn: Connection) -> None:
    pool = submitted(api, conn)
    pool.default_retry_settings = RetrySettings(max_per_instance_retries=2)
    pool.task_default_wait_for_pool_resources_synchronization = True
    pool.name = "renamed"
    api.add("PUT", POOL_URL)
    pool.commit()
    assert body(api.calls[0]) == pool_doc(
        name="renamed", taskDefaultWaitForPoolResourcesSynchronization=True,
        defaultRetrySettings={"maxTotalRetries": None, "maxPerInstanceRetries": 2})


@pytest.mark.parametrize("field, value", [
    ("profile", "other"), ("instancecount", 3), ("constants", {}), ("shortname", "x"),
    ("preparation_task", "x"), ("multi_slots", 2), ("hardware_constraints", []),
    ("completion_ttl", "1.00:00:00"), ("auto_delete", True), ("resources", []),
    ("privileges", Privileges(True)), ("max_time_queue_seconds", 5),
])
def test_fields_fixed_after_submit_name_themselves(api: responses.RequestsMock,
                                                   conn: Connection, field: str,
                                                   value: Any) -> None:
    pool = submitted(api, conn)
    with pytest.raises(ReadOnlyFieldError, match=f"Pool.{field} cannot change"):
        setattr(pool, field, value)


def test_read_only_field_cannot_be_set(api: responses.RequestsMock, conn: Connection) -> None:
    pool = submitted(api, conn)
    with pytest.raises(ReadOnlyFieldError, match="Pool.pool_usage is read-only"):
        pool.pool_usage = 1.0  # type: ignore[misc]


# ----------------------------------------------------------------------------- actions
def test_close_update_resources_and_delete(api: responses.RequestsMock, conn: Connection,
                                           storage: FakeStorage) -> None:
    storage.buckets["in"] = {"a": b"1"}
    resources = [{"bucketName": "in"}]
    pool = submitted(api, conn, advancedResourceBuckets=resources)
    api.add("POST", f"{POOL_URL}/close")
    api.add("GET", POOL_URL, json=pool_doc(state="Closing", advancedResourceBuckets=resources))
    api.add("PATCH", POOL_URL)
    api.add("GET", POOL_URL, json=pool_doc(state="Closing", advancedResourceBuckets=resources))
    api.add("DELETE", POOL_URL)
    assert pool.close() is pool and pool.state == PoolState.CLOSING
    assert pool.update_resources() is pool
    pool.delete(purge_resources=True)
    assert [c.request.method for c in api.calls] == ["POST", "GET", "PATCH", "GET", "DELETE"]
    assert api.calls[0].request.body is None and api.calls[2].request.body is None
    assert "Content-Type" not in api.calls[2].request.headers
    assert storage.buckets == {}
    assert pool.state == PoolState.PENDING_DELETE and pool.auto_update is False


def test_actions_need_a_submitted_pool(conn: Connection) -> None:
    pool = conn.create_pool("p", "docker-batch")
    for action in (pool.close, pool.delete, pool.update_resources, pool.stdout, pool.commit):
        with pytest.raises(ResourceStateError, match="not submitted"):
            action()


def test_output_and_missing_pool_or_instance(api: responses.RequestsMock,
                                            conn: Connection) -> None:
    pool = submitted(api, conn)
    api.add("GET", f"{POOL_URL}/stdout", body="out\n", content_type="text/plain")
    api.add("POST", f"{POOL_URL}/stderr/1", body="new err\n", content_type="text/plain")
    api.add("GET", f"{POOL_URL}/stdout/7", status=404, json={"message": "no instance 7"})
    api.add("POST", f"{POOL_URL}/close", status=404, json={"message": "no pool"})
    assert pool.stdout() == "out\n"
    assert pool.fresh_stderr(instance_id=1) == "new err\n"
    with pytest.raises(MissingPoolInstanceException, match="no instance 7"):
        pool.stdout(7)
    with pytest.raises(MissingPoolException, match="no pool"):
        pool.close()


def test_retrieve_missing_pool(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{API}/pools/nope", status=404, json={"message": "no such pool"})
    with pytest.raises(MissingPoolException) as caught:
        conn.retrieve_pool("nope")
    assert caught.value.status_code == 404


# ----------------------------------------------------------------------------- wait
def test_wait_for_a_state_polls_with_backoff(api: responses.RequestsMock, conn: Connection,
                                             clock: FakeClock) -> None:
    pool = submitted(api, conn)
    for state in ("Submitted", "PartiallyDispatched", "PartiallyExecuting", "FullyExecuting"):
        api.add("GET", POOL_URL, json=pool_doc(state=state))
    assert pool.wait(PoolState.FULLY_EXECUTING) is True
    assert len(api.calls) == 4
    assert clock.sleeps == pytest.approx([0.05, 0.075, 0.1125])
    assert pool.state == PoolState.FULLY_EXECUTING


def test_wait_default_is_a_final_state(api: responses.RequestsMock, conn: Connection) -> None:
    pool = submitted(api, conn)
    api.add("GET", POOL_URL, json=pool_doc(state="Closing"))
    api.add("GET", POOL_URL, json=pool_doc(state="Closed"))
    assert pool.wait() is True and pool.state == PoolState.CLOSED


def test_wait_stops_on_another_final_state(api: responses.RequestsMock,
                                           conn: Connection) -> None:
    pool = submitted(api, conn)
    api.add("GET", POOL_URL, json=pool_doc(state="Failure"))
    assert pool.wait("FullyExecuting") is False
    assert pool.state == PoolState.FAILURE and len(api.calls) == 1


def test_wait_times_out_and_interval_is_capped(api: responses.RequestsMock, conn: Connection,
                                               clock: FakeClock) -> None:
    pool = submitted(api, conn)
    api.add("GET", POOL_URL, json=pool_doc(state="PartiallyExecuting"))
    start = clock.now
    assert pool.wait([PoolState.FULLY_EXECUTING, PoolState.CLOSED], timeout=10) is False
    assert clock.now - start == pytest.approx(10)
    assert max(clock.sleeps) == 1.0


def test_wait_rejects_unknown_states_and_unsubmitted(conn: Connection) -> None:
    pool = conn.create_pool("p", "docker-batch")
    with pytest.raises(ValueError, match="unknown pool state"):
        pool.wait("Running")
    with pytest.raises(TypeError):
        pool.wait(30)  # type: ignore[arg-type]
    assert pool.wait() is False


# ----------------------------------------------------------------------------- listing
def test_pools_page_and_all_pools(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", f"{API}/pools/paginate", json={
        "data": [pool_doc("p1")], "token": None, "nextToken": "n2", "isTruncated": True})
    api.add("POST", f"{API}/pools/paginate", json={
        "data": [pool_doc("p1")], "token": None, "nextToken": "n2", "isTruncated": True})
    api.add("POST", f"{API}/pools/paginate", json={
        "data": [pool_doc("p2")], "token": "n2", "nextToken": None, "isTruncated": False})
    page = conn.pools_page(maximum=1, tags=["a", "b"])
    assert [p.uuid for p in page] == ["p1"] and page.next_token == "n2" and page.is_truncated
    assert body(api.calls[0]) == {
        "filter": {"operator": "Or", "filters": [
            {"operator": "Equal", "field": "Tags", "value": "a"},
            {"operator": "Equal", "field": "Tags", "value": "b"}]},
        "token": None, "maximumResults": 1}
    assert [p.uuid for p in conn.all_pools(tags_intersect="a")] == ["p1", "p2"]
    assert body(api.calls[2])["token"] == "n2"
    assert body(api.calls[1])["filter"] == {"operator": "Equal", "field": "Tags", "value": "a"}


def test_summaries_are_partial_and_load_on_demand(api: responses.RequestsMock,
                                                  conn: Connection) -> None:
    api.add("POST", f"{API}/pools/summaries/paginate", json={
        "data": [{"uuid": POOL_UUID, "name": "render-pool", "state": "Closed"}],
        "token": None, "nextToken": None, "isTruncated": False})
    api.add("GET", POOL_URL, json=pool_doc(state="Closed", preparationTask={"commandLine": "x"}))
    (pool,) = list(conn.all_pools(summary=True))
    assert pool.name == "render-pool" and len(api.calls) == 1
    assert pool.preparation_task == "x"  # not in the summary: loads the pool
    assert api.calls[1].request.url == POOL_URL
