"""Task options: pool/job placement, dependencies, retries, TTLs, privileges, snapshots."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import responses

from qcompute import (
    AdvancedDependency,
    BadRequestError,
    Bucket,
    Connection,
    Dependencies,
    FieldError,
    FinalStateCondition,
    Privileges,
    ReadOnlyFieldError,
    ResourceStateError,
    RetrySettings,
    SecretsAccessRights,
    SnapshotState,
    Task,
)
from qcompute._wire import dump_timespan, parse_timespan

from .conftest import FakeClock
from .helpers import API, JOB_UUID, POOL_UUID, TASK_UUID, body, job_doc, pool_doc, task_doc

TASK_URL = f"{API}/tasks/{TASK_UUID}"
OTHER = ["7a3c9e52-0000-4000-8000-0000000000d1", "7a3c9e52-0000-4000-8000-0000000000d2"]


def submit(api: responses.RequestsMock, task: Task, **doc: Any) -> dict[str, Any]:
    """Submit ``task``; return the POST /tasks body."""
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", TASK_URL, json=task_doc(**doc))
    task.submit()
    posts = [c for c in api.calls if c.request.url == f"{API}/tasks"]
    return body(posts[-1])


def submitted(api: responses.RequestsMock, conn: Connection, **doc: Any) -> Task:
    api.add("GET", TASK_URL, json=task_doc(**doc))
    task = conn.retrieve_task(TASK_UUID)
    api.calls.reset()
    return task


# ----------------------------------------------------------------------------- pool and job
def test_a_pool_task_has_no_profile(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{API}/pools/{POOL_UUID}", json=pool_doc())
    pool = conn.retrieve_pool(POOL_UUID)
    for task in (conn.create_task("t", pool=pool), conn.create_task("t", pool=POOL_UUID),
                 conn.create_task("t", pool)):
        doc = task._submit_document()
        assert (doc["profile"], doc["poolUuid"]) == (None, POOL_UUID)
    with pytest.raises(ValueError, match="profile or in a pool, not both"):
        conn.create_task("t", "docker-batch", pool=pool)


def test_a_job_task_cannot_run_in_another_pool(api: responses.RequestsMock,
                                               conn: Connection) -> None:
    api.add("GET", f"{API}/jobs/{JOB_UUID}", json=job_doc(poolUuid=POOL_UUID))
    job = conn.retrieve_job(JOB_UUID)
    task = conn.create_task("t", job=job)
    assert (task.job_uuid, task.pool_uuid) == (JOB_UUID, None)
    assert conn.create_task("t", pool=POOL_UUID, job=job).pool_uuid == POOL_UUID
    with pytest.raises(ValueError, match=f"runs in pool {POOL_UUID}, not in pool other"):
        conn.create_task("t", pool="other", job=job)


# ----------------------------------------------------------------------------- dependencies
def test_simple_dependencies_from_uuids_and_tasks(api: responses.RequestsMock,
                                                  conn: Connection) -> None:
    api.add("GET", f"{API}/tasks/{OTHER[1]}", json=task_doc(uuid=OTHER[1]))
    other = conn.retrieve_task(OTHER[1])
    task = conn.create_task("t", "docker-batch")
    task.set_task_dependencies_from_uuids([OTHER[0]])
    task.set_task_dependencies_from_tasks([other])
    task.set_task_dependencies_from_uuids([OTHER[0]])  # already there
    assert task.dependencies.uuids == tuple(OTHER)
    assert submit(api, task)["dependencies"] == {"dependsOn": OTHER}


def test_advanced_dependencies_with_conditions(api: responses.RequestsMock,
                                               conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.set_task_advanced_dependencies([
        AdvancedDependency(OTHER[0], [FinalStateCondition.SUCCESS, "Failure"]),
        AdvancedDependency(OTHER[1], "cancelled"),
        AdvancedDependency(OTHER[1], ["cancelled"]),  # the same again: kept once
    ])
    assert submit(api, task)["dependencies"] == {"advancedDependsOn": [
        {"taskUuid": OTHER[0], "taskFinalStateCondition": ["success", "failure"]},
        {"taskUuid": OTHER[1], "taskFinalStateCondition": ["cancelled"]}]}


def test_mixing_simple_and_advanced_is_refused(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.set_task_dependencies_from_uuids([OTHER[0]])
    with pytest.raises(ValueError, match="simple dependencies .* or advanced ones .* not both"):
        task.set_task_advanced_dependencies([AdvancedDependency(OTHER[1])])
    task.clear_task_dependencies()
    task.set_task_advanced_dependencies([AdvancedDependency(OTHER[1])])
    with pytest.raises(ValueError, match="not both"):
        task.set_task_dependencies_from_uuids([OTHER[0]])
    with pytest.raises(ValueError, match="given twice with different conditions"):
        task.set_task_advanced_dependencies([AdvancedDependency(OTHER[1], ["failure"])])
    with pytest.raises(ValueError, match="success, failure, cancelled"):
        AdvancedDependency(OTHER[0], ["done"])
    assert task.dependencies == Dependencies(advanced=(AdvancedDependency(OTHER[1]),))


def test_remove_and_clear_dependencies(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.set_task_dependencies_from_uuids(OTHER)
    task.remove_task_dependency(OTHER[0])
    assert task.dependencies.depends_on == (OTHER[1],)
    task.clear_task_dependencies()
    assert not task.dependencies and "dependencies" not in task._submit_document()


def test_dependencies_are_read_and_fixed_after_submit(api: responses.RequestsMock,
                                                      conn: Connection) -> None:
    task = submitted(api, conn, dependencies={
        "dependsOn": [], "state": "waiting",
        "advancedDependsOn": [{"taskUuid": OTHER[0], "taskFinalStateCondition": ["success"],
                               "state": "waiting", "actualFinalState": None}]})
    deps = task.dependencies
    assert deps.state == "waiting" and deps.advanced[0].task_uuid == OTHER[0]
    assert deps.advanced[0].conditions == (FinalStateCondition.SUCCESS,)
    assert deps.advanced[0].state == "waiting"
    with pytest.raises(ReadOnlyFieldError, match="Task.dependencies cannot change"):
        task.set_task_dependencies_from_uuids([OTHER[1]])


# ----------------------------------------------------------------------------- other options
def test_options_in_the_submission_document(api: responses.RequestsMock,
                                            conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.retry_settings = RetrySettings(max_total_retries=5, max_per_instance_retries=2)
    task.max_time_queue_seconds = 120
    task.auto_delete = True
    task.completion_ttl = "2.00:30:00"
    task.upload_results_on_cancellation = True
    task.wait_for_pool_resources_synchronization = False
    task.snapshot_whitelist = r".*\.ckpt"
    task.snapshot_blacklist = r"tmp/.*"
    task.secrets_access_rights.add_secrets_by_prefixes(["db/"]).add_secret_by_key("api")
    task.allow_credentials_to_be_exported_to_task_environment()
    task.labels["team"] = "x"
    sent = submit(api, task)
    assert {k: v for k, v in sent.items() if k not in ("name", "profile", "poolUuid", "jobUuid",
                                                       "instanceCount", "constants", "tags",
                                                       "advancedResourceBuckets")} == {
        "labels": {"team": "x"},
        "retrySettings": {"maxTotalRetries": 5, "maxPerInstanceRetries": 2},
        "maxTimeQueueSeconds": 120, "autoDeleteOnCompletion": True,
        "completionTimeToLive": "2.00:30:00", "uploadResultsOnCancellation": True,
        "waitForPoolResourcesSynchronization": False,
        "snapshotWhitelist": r".*\.ckpt", "snapshotBlacklist": r"tmp/.*",
        "secretsAccessRights": {"bySecret": [{"key": "api"}], "byPrefix": [{"prefix": "db/"}]},
        "privileges": {"exportApiAndStorageCredentialsInEnvironment": True},
    }


def test_unset_options_are_not_sent(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    assert task.auto_delete is False and task.retry_settings == RetrySettings()
    assert task.privileges == Privileges() and not task.secrets_access_rights
    doc = task._submit_document()
    assert "secretsAccessRights" not in doc  # an empty one is never sent
    assert "completionTimeToLive" not in doc and "maxTimeQueueSeconds" not in doc


@pytest.mark.parametrize("field, value", [
    ("retry_settings", {"maxTotalRetries": 1}), ("max_time_queue_seconds", -1),
    ("auto_delete", "yes"), ("completion_ttl", "soon"), ("upload_results_on_cancellation", 1),
    ("secrets_access_rights", ["a"]), ("hardware_constraints", ["4 cores"]),
])
def test_bad_option_values_are_refused(conn: Connection, field: str, value: Any) -> None:
    with pytest.raises(FieldError):
        setattr(conn.create_task("t", "docker-batch"), field, value)


@pytest.mark.parametrize("field, value", [
    ("retry_settings", RetrySettings()), ("max_time_queue_seconds", 5), ("auto_delete", True),
    ("completion_ttl", timedelta(1)), ("upload_results_on_cancellation", True),
    ("snapshot_whitelist", "x"), ("secrets_access_rights", SecretsAccessRights()),
    ("privileges", Privileges(True)), ("wait_for_pool_resources_synchronization", True),
    ("hardware_constraints", []),
])
def test_options_are_fixed_after_submit(api: responses.RequestsMock, conn: Connection,
                                        field: str, value: Any) -> None:
    task = submitted(api, conn)
    with pytest.raises(ReadOnlyFieldError, match=f"Task.{field} cannot change"):
        setattr(task, field, value)


def test_in_place_change_of_a_fixed_option_is_refused_at_commit(api: responses.RequestsMock,
                                                                conn: Connection) -> None:
    task = submitted(api, conn, secretsAccessRights={"bySecret": [], "byPrefix": []})
    task.secrets_access_rights.add_secret_by_key("k")
    with pytest.raises(ReadOnlyFieldError, match="Task.secrets_access_rights cannot change"):
        task.commit()
    assert len(api.calls) == 0


def test_commit_keeps_the_server_form_of_unchanged_fields(api: responses.RequestsMock,
                                                          conn: Connection) -> None:
    server = {"completionTimeToLive": "00:00:00", "maxTimeQueueSeconds": 60,
              "retrySettings": {"maxTotalRetries": None, "maxPerInstanceRetries": 3}}
    task = submitted(api, conn, **server)
    assert task.completion_ttl == timedelta(0) and task.retry_settings.max_per_instance_retries == 3
    task.tags = ["new"]
    api.add("PUT", TASK_URL)
    task.commit()
    assert body(api.calls[0]) == task_doc(tags=["new"], **server)


# ----------------------------------------------------------------------------- timespans
@pytest.mark.parametrize("text, value", [
    ("00:00:00", timedelta(0)), ("0.01:00:00", timedelta(hours=1)),
    ("12.03:04:05", timedelta(days=12, hours=3, minutes=4, seconds=5)),
    ("1.03:16:50.5000000", timedelta(days=1, hours=3, minutes=16, seconds=50, microseconds=500000)),
    ("00:00:01.25", timedelta(seconds=1.25)),
])
def test_parse_timespan(text: str, value: timedelta) -> None:
    assert parse_timespan(text) == value


def test_dump_timespan() -> None:
    assert dump_timespan(timedelta(0)) == "0.00:00:00"
    assert dump_timespan(timedelta(days=10, minutes=1)) == "10.00:01:00"
    assert dump_timespan(timedelta(seconds=1.5)) == "0.00:00:01.5000000"
    with pytest.raises(ValueError):
        dump_timespan(timedelta(seconds=-1))


# ----------------------------------------------------------------------------- snapshots
def test_periodic_snapshot_asked_before_submit_is_sent_right_after(
        api: responses.RequestsMock, conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.snapshot(600, whitelist=r".*\.ckpt", bucket=Bucket(conn, "snaps", create=False))
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("POST", f"{TASK_URL}/snapshot/periodic")
    api.add("GET", TASK_URL, json=task_doc(snapshotInterval=600))
    task.submit()
    assert [(c.request.method, c.request.url) for c in api.calls] == [
        ("POST", f"{API}/tasks"), ("POST", f"{TASK_URL}/snapshot/periodic"), ("GET", TASK_URL)]
    assert body(api.calls[1]) == {"interval": 600, "whitelist": r".*\.ckpt", "blacklist": None,
                                  "bucket": "snaps", "bucketPrefix": None}
    assert task.snapshot_interval == 600


def test_periodic_snapshot_with_bulk_submit(api: responses.RequestsMock,
                                            conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.snapshot(60)
    api.add("POST", f"{API}/tasks", json=[{"statusCode": 201, "uuid": TASK_UUID}])
    api.add("POST", f"{TASK_URL}/snapshot/periodic")
    conn.submit_tasks([task])
    assert body(api.calls[1])["interval"] == 60


def test_periodic_snapshot_on_a_running_task(api: responses.RequestsMock,
                                             conn: Connection) -> None:
    task = submitted(api, conn, state="FullyExecuting")
    api.add("POST", f"{TASK_URL}/snapshot/periodic")
    api.add("POST", f"{TASK_URL}/snapshot/periodic", status=400,
            json={"message": "interval too short"})
    task.snapshot(30, bucket="other", bucket_prefix="snap/")
    assert body(api.calls[0]) == {"interval": 30, "whitelist": None, "blacklist": None,
                                  "bucket": "other", "bucketPrefix": "snap/"}
    with pytest.raises(BadRequestError, match="interval too short"):
        task.snapshot(1)
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="snapshot interval"):
            task.snapshot(bad)  # type: ignore[arg-type]


def test_instant_snapshot_status_and_wait(api: responses.RequestsMock, conn: Connection,
                                          clock: FakeClock) -> None:
    task = submitted(api, conn, state="FullyExecuting")
    api.add("POST", f"{TASK_URL}/snapshot", json={"id": "snap-1"})
    api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting"))
    assert task.instant(blacklist="tmp/.*") == "snap-1"
    assert body(api.calls[0]) == {"whitelist": None, "blacklist": "tmp/.*", "bucket": None,
                                  "bucketPrefix": None}
    status_url = f"{TASK_URL}/snapshot/snap-1"
    snap = {"id": "snap-1", "taskUuid": TASK_UUID, "triggerDate": "2026-11-21T10:00:00Z",
            "snapshotConfig": {"whitelist": None, "blacklist": "tmp/.*", "bucket": "out",
                               "bucketPrefix": ""}, "sizeToUpload": 10, "transferredSize": 0}
    for status in ("triggered", "InProgress", "Failed"):
        api.add("GET", status_url, json={**snap, "status": status})
    first = task.snapshot_status("snap-1")
    assert first.status == SnapshotState.TRIGGERED and first.bucket == "out"
    assert first.trigger_date == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
    assert task.wait_snapshot("snap-1") is True  # "Failed" is a final state, not Triggered
    assert task.snapshot_status  # noqa: B018
    assert clock.sleeps == pytest.approx([0.05])


def test_wait_snapshot_times_out_on_an_unknown_status(api: responses.RequestsMock,
                                                      conn: Connection,
                                                      clock: FakeClock) -> None:
    task = submitted(api, conn)
    api.add("GET", f"{TASK_URL}/snapshot/s", json={"id": "s", "status": "Queued"})
    assert task.wait_snapshot("s", timeout=2) is False
    assert task.snapshot_status("s").status == "Queued"
    assert sum(clock.sleeps) == pytest.approx(2)


def test_snapshot_calls_need_a_submitted_task(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    for call in (task.instant, lambda: task.snapshot_status("x")):
        with pytest.raises(ResourceStateError, match="not submitted"):
            call()
