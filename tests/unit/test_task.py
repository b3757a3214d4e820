"""Task: the submission document, fixed fields, wait/run/abort/delete, output, results."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import responses

from qcompute import (
    BadRequestError,
    Bucket,
    CompletedInstance,
    Connection,
    Error,
    FieldError,
    InstanceState,
    MissingBucketException,
    MissingTaskException,
    MissingTaskInstanceException,
    ReadOnlyFieldError,
    ResourceStateError,
    RunningInstance,
    Task,
    TaskState,
)

from .conftest import FakeClock
from .helpers import API, TASK_UUID, TOKEN, FakeStorage, body, task_doc

TASK_URL = f"{API}/tasks/{TASK_UUID}"


def submitted(api: responses.RequestsMock, conn: Connection, **doc: Any) -> Task:
    """A task loaded from a server document (as retrieve_task gives it)."""
    api.add("GET", TASK_URL, json=task_doc(**doc))
    task = conn.retrieve_task(TASK_UUID)
    api.calls.reset()
    return task


# ----------------------------------------------------------------------------- submit
def test_submit_sends_the_document_then_loads_the_task(api: responses.RequestsMock,
                                                       conn: Connection) -> None:
    task = conn.create_task("hello", "docker-batch", 2, shortname="hi")
    assert task.state == TaskState.UNSUBMITTED and task.uuid is None
    task.constants["DOCKER_CMD"] = "echo $INSTANCE_ID"
    task.tags = ["a", "b"]
    task.labels = {"team": "x"}
    task.resources = [Bucket(conn, "in", create=False).with_filtering("data/")
                      .with_resource_transformation("data/")]
    task.results = Bucket(conn, "out", create=False)
    task.results_whitelist = r".*\.txt"
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", TASK_URL, json=task_doc(tags=["a", "b"]))
    assert task.submit() is task
    post, get = api.calls[0].request, api.calls[1].request
    assert (post.method, post.url, get.method, get.url) == ("POST", f"{API}/tasks", "GET", TASK_URL)
    assert post.headers["Authorization"] == TOKEN
    assert uuid.UUID(post.headers["Idempotency-Key"])
    assert body(api.calls[0]) == {
        "name": "hello", "shortname": "hi", "profile": "docker-batch", "poolUuid": None,
        "jobUuid": None, "instanceCount": 2,
        "constants": [{"key": "DOCKER_CMD", "value": "echo $INSTANCE_ID"}],
        "tags": ["a", "b"], "labels": {"team": "x"},
        "advancedResourceBuckets": [{
            "bucketName": "in", "filtering": {"prefixFiltering": {"prefix": "data/"}},
            "resourcesTransformation": {"stripPrefix": {"prefix": "data/"}},
            "cacheTTLSec": None}],
        "resultBucket": "out", "resultsWhitelist": r".*\.txt",
    }
    assert task.uuid == TASK_UUID
    assert task.state == TaskState.SUBMITTED
    assert task.creation_date == datetime(2026, 11, 21, 10, 0, 0, 123456, timezone.utc)
    assert task.constants == {"DOCKER_CMD": "echo hi"}  # the server's document now


def test_range_sends_advanced_ranges_instead_of_instance_count(api: responses.RequestsMock,
                                                               conn: Connection) -> None:
    task = conn.create_task("frames", "docker-batch", "1,3-8")
    assert (task.instancecount, task.advanced_range) == (0, "1,3-8")
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", TASK_URL, json=task_doc())
    task.submit()
    sent = body(api.calls[0])
    assert sent["advancedRanges"] == "1,3-8" and "instanceCount" not in sent


def test_instancecount_and_advanced_range_exclude_each_other(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch", 3)
    with pytest.raises(FieldError, match="only be set while instancecount is 0"):
        task.advanced_range = "0-4"
    task.instancecount = 0
    task.advanced_range = "0-4"
    with pytest.raises(FieldError, match="while advanced_range is set"):
        task.instancecount = 2
    with pytest.raises(FieldError, match="int >= 0"):
        task.instancecount = -1


@pytest.mark.parametrize("args, error", [
    (("", "docker-batch"), FieldError), (("t", "docker-batch", 1.5), TypeError),
    (("t", "docker-batch", -2), ValueError), (("t", 42), TypeError),
])
def test_constructor_rejects_bad_values(conn: Connection, args: tuple[Any, ...],
                                        error: type) -> None:
    with pytest.raises(error):
        Task(conn, *args)


def test_pool_and_job_objects_give_their_uuids(conn: Connection) -> None:
    class Obj:
        def __init__(self, uuid: str) -> None:
            self.uuid = uuid

    task = Task(conn, "t", Obj("pool-1"), job=Obj("job-1"))
    doc = task._submit_document()
    assert (doc["profile"], doc["poolUuid"], doc["jobUuid"]) == (None, "pool-1", "job-1")


def test_submit_404_is_a_missing_bucket_and_400_keeps_the_message(api: responses.RequestsMock,
                                                                  conn: Connection) -> None:
    api.add("POST", f"{API}/tasks", status=404, json={"message": "bucket in not found"})
    api.add("POST", f"{API}/tasks", status=400,
            json={"message": "unknown profile 'nope'", "code": "invalid_profile"})
    with pytest.raises(MissingBucketException, match="bucket in not found"):
        conn.create_task("t", "docker-batch").submit()
    with pytest.raises(BadRequestError) as caught:
        conn.create_task("t", "nope").submit()
    assert (caught.value.message, caught.value.code) == ("unknown profile 'nope'", "invalid_profile")


def test_submit_twice_is_refused(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    with pytest.raises(ResourceStateError, match="already submitted"):
        task.submit()
    assert len(api.calls) == 0


# ----------------------------------------------------------------------------- fields after submit
@pytest.mark.parametrize("field, value", [
    ("profile", "other"), ("instancecount", 5), ("shortname", "x"), ("resources", []),
    ("results", None), ("results_whitelist", "x"), ("advanced_range", None),
    ("constants", {"DOCKER_CMD": "other"}),
])
def test_fields_fixed_after_submit_name_themselves(api: responses.RequestsMock, conn: Connection,
                                                   field: str, value: Any) -> None:
    task = submitted(api, conn)
    with pytest.raises(ReadOnlyFieldError, match=f"Task.{field} cannot change"):
        setattr(task, field, value)


def test_tags_labels_name_commit_after_submit(api: responses.RequestsMock,
                                             conn: Connection) -> None:
    task = submitted(api, conn)
    task.tags = ["a", "b"]
    task.labels["k"] = "v"
    task.name = "renamed"
    api.add("PUT", TASK_URL)
    task.commit()
    assert api.calls[0].request.method == "PUT"
    assert body(api.calls[0]) == task_doc(tags=["a", "b"], labels={"k": "v"}, name="renamed")
    task.commit()
    assert len(api.calls) == 1


def test_server_documents_are_parsed(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(
        api, conn, state="Failure", previousState="FullyExecuting", progress=100.0,
        endDate="2026-11-21T10:05:00Z",
        status={"executionProgress": 100, "downloadProgress": 100, "uploadProgress": 50,
                "instanceCount": 2, "succeededRange": "0", "failedRange": "1",
                "executedRange": "0-1", "executionTimeByCpuModel": [],
                "executionTimeGhzByCpuModel": []},
        completedInstances=[
            {"instanceId": 0, "state": "Success", "exitCode": 0, "wallTimeSec": 1.5,
             "execTimeSec": 1.0, "peakMemoryMB": 12, "executionAttemptCount": 1},
            {"instanceId": 1, "state": "Failure", "exitCode": 3, "wallTimeSec": 2,
             "execTimeSec": 1.5, "peakMemoryMB": 10, "executionAttemptCount": 2,
             "error": {"code": "exit", "message": "exited with 3", "debug": None}}],
        errors=[{"code": "E", "message": "instance 1 failed", "debug": "trace"}],
        advancedResourceBuckets=[{"bucketName": "in", "filtering": {"prefixFiltering": {"prefix": "a/"}}}],
        resultBucket="out",
    )
    assert task.state == TaskState.FAILURE and task.previous_state == TaskState.FULLY_EXECUTING
    assert task.status.execution_progress == 100 and task.status.failed_range == "1"
    assert task.status.instance_count == 2 and task.status.upload_progress == 50
    first, second = task.completed_instances
    assert first == CompletedInstance(instance_id=0, state=InstanceState.SUCCEEDED, exit_code=0,
                                      wall_time_sec=1.5, exec_time_sec=1.0, peak_memory_mb=12,
                                      execution_attempt_count=1)
    assert second.exit_code == 3 and second.error == Error("exit", "exited with 3", None)
    assert task.errors == [Error("E", "instance 1 failed", "trace")]
    assert task.end_date == datetime(2026, 11, 21, 10, 5, tzinfo=timezone.utc)
    assert task.resources == [Bucket(conn, "in", create=False, prefix_filtering="a/")]
    assert task.results.name == "out"
    assert len(api.calls) == 0  # nothing fetched, and no bucket created


def test_running_instances_are_read_from_the_status(api: responses.RequestsMock,
                                                     conn: Connection) -> None:
    entry = {"instanceId": 3, "phase": "execution", "cpuModel": "AMD EPYC", "cpuUsage": 42.5,
             "currentFrequencyGHz": 2.5, "maxFrequencyGHz": 3, "currentMemoryMB": 300,
             "maxMemoryMB": 512, "memoryUsage": 0.29, "networkInKbps": 8, "networkOutKbps": 4,
             "executionTimeSec": 12.5, "executionTimeGHz": 7.5, "executionAttemptCount": 2,
             "progress": 0, "activeForwards": [], "vpnConnections": []}
    task = submitted(api, conn, state="FullyExecuting", status={
        "runningInstancesInfo": {"averageCpuUsage": 42.5, "perRunningInstanceInfo": [entry]}})
    assert task.running_instances == [RunningInstance(
        instance_id=3, phase="execution", progress=0.0, cpu_model="AMD EPYC", cpu_usage=42.5,
        current_frequency_ghz=2.5, max_frequency_ghz=3.0, current_memory_mb=300.0,
        max_memory_mb=512.0, memory_usage=0.29, network_in_kbps=8.0, network_out_kbps=4.0,
        execution_time_sec=12.5, execution_time_ghz=7.5, execution_attempt_count=2)]
    assert task.status.running_instances_info["averageCpuUsage"] == 42.5  # the raw object
    assert len(api.calls) == 0


def test_unknown_state_is_kept_as_text(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn, state="Hibernating")
    assert task.state == "Hibernating"


# ----------------------------------------------------------------------------- wait / run
def test_wait_before_submit_is_false_without_requests(api: responses.RequestsMock,
                                                      conn: Connection) -> None:
    assert conn.create_task("t", "docker-batch").wait() is False
    assert len(api.calls) == 0


def test_wait_polls_with_a_short_growing_interval(api: responses.RequestsMock, conn: Connection,
                                                  clock: FakeClock) -> None:
    task = submitted(api, conn)
    for state in ("Submitted", "FullyExecuting", "UploadingResults", "Success"):
        api.add("GET", TASK_URL, json=task_doc(state=state))
    assert task.wait() is True
    assert len(api.calls) == 4
    assert clock.sleeps == pytest.approx([0.05, 0.075, 0.1125])
    assert sum(clock.sleeps) < 0.25  # a task that ends is seen within a fraction of a second
    assert task.state == TaskState.SUCCESS


def test_wait_interval_is_capped_at_one_second(api: responses.RequestsMock, conn: Connection,
                                               clock: FakeClock) -> None:
    task = submitted(api, conn)
    for _ in range(12):
        api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting"))
    api.add("GET", TASK_URL, json=task_doc(state="Cancelled"))
    assert task.wait() is True
    assert max(clock.sleeps) == 1.0
    assert clock.sleeps[-3:] == [1.0, 1.0, 1.0]


def test_wait_times_out(api: responses.RequestsMock, conn: Connection, clock: FakeClock) -> None:
    task = submitted(api, conn)
    api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting"))
    start = clock.now
    assert task.wait(timeout=2.0) is False
    assert clock.now - start == pytest.approx(2.0)  # the last sleep is cut to the deadline
    assert task.state == TaskState.FULLY_EXECUTING


def _long_polled_task(api: responses.RequestsMock) -> Task:
    """A task of a server that advertises its long poll (read at the first wait)."""
    conn = Connection(client_token="tok", cluster_url=API, storage_url="http://s3.test")
    api.add("GET", TASK_URL, json=task_doc())
    task = conn.retrieve_task(TASK_UUID)
    api.calls.reset()
    api.add("GET", f"{API}/settings", json={"storage": "http://s3.test", "taskWaitMaxSeconds": 60})
    return task


def test_wait_uses_the_long_poll_when_the_server_offers_it(
        api: responses.RequestsMock, clock: FakeClock) -> None:
    task = _long_polled_task(api)
    api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting"))
    api.add("GET", TASK_URL, json=task_doc(state="UploadingResults"))
    api.add("GET", TASK_URL, json=task_doc(state="Success"))
    assert task.wait(timeout=100) is True
    assert clock.sleeps == []  # the server holds the requests: the client never sleeps
    urls = [c.request.url for c in api.calls]
    assert urls[0] == f"{API}/settings"
    # held until final; a server that does not know ``until`` replies at each change instead
    assert urls[1:] == [f"{TASK_URL}?wait=60&knownState={state}&until=final"
                        for state in ("Submitted", "FullyExecuting", "UploadingResults")]


def test_wait_with_live_progress_is_woken_at_each_change_or_each_second(
        api: responses.RequestsMock, clock: FakeClock) -> None:
    task = _long_polled_task(api)
    api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting"))
    api.add("GET", TASK_URL, json=task_doc(state="Success"))
    assert task.wait(timeout=100, live_progress=True) is True
    urls = [c.request.url for c in api.calls]
    # held at most 1 s: the bar shows instance counts, which change within a state
    assert urls[1:] == [TASK_URL, f"{TASK_URL}?wait=1&knownState=FullyExecuting"]


def test_wait_does_not_stop_on_pending_cancel(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("GET", TASK_URL, json=task_doc(state="PendingCancel"))
    api.add("GET", TASK_URL, json=task_doc(state="Cancelled"))
    assert task.wait() is True
    assert len(api.calls) == 2


def test_run_submits_waits_and_does_not_abort_a_finished_task(
        api: responses.RequestsMock, conn: Connection, tmp_path: Path,
        storage: FakeStorage) -> None:
    storage.buckets["out"] = {"r/result.txt": b"done"}
    task = conn.create_task("t", "docker-batch")
    task.results = Bucket(conn, "out", create=False)
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", TASK_URL, json=task_doc(resultBucket="out"))
    api.add("GET", TASK_URL, json=task_doc(state="Success", resultBucket="out"))
    api.add("GET", TASK_URL, json=task_doc(state="Success", resultBucket="out"))  # download
    task.run(output_dir=str(tmp_path / "out"), job_timeout=60)
    assert [c.request.method for c in api.calls] == ["POST", "GET", "GET", "GET"]
    assert (tmp_path / "out" / "r" / "result.txt").read_bytes() == b"done"


def test_run_aborts_when_the_timeout_passes(api: responses.RequestsMock, conn: Connection,
                                            clock: FakeClock) -> None:
    server = {"state": "FullyExecuting"}

    def abort(request: Any) -> tuple[int, dict[str, str], str]:
        server["state"] = "Cancelled"
        return 200, {}, ""

    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add_callback("GET", TASK_URL, callback=lambda request: (
        200, {}, json.dumps(task_doc(state=server["state"]))))
    api.add_callback("POST", f"{TASK_URL}/abort", callback=abort)
    task = conn.create_task("t", "docker-batch")
    start = clock.now
    task.run(job_timeout=0.5)
    calls = [(c.request.method, c.request.url) for c in api.calls]
    assert calls[-2:] == [("POST", f"{TASK_URL}/abort"), ("GET", TASK_URL)]
    assert calls.count(("POST", f"{TASK_URL}/abort")) == 1
    assert clock.now - start == pytest.approx(0.5)
    assert task.state == TaskState.CANCELLED


def test_resume_waits_for_a_retrieved_task(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("GET", TASK_URL, json=task_doc(state="Success"))
    assert task.resume() is task
    assert task.state == TaskState.SUCCESS
    with pytest.raises(ResourceStateError):
        conn.create_task("t", "docker-batch").resume()


# ----------------------------------------------------------------------------- actions
def test_abort_posts_then_refreshes_the_object(api: responses.RequestsMock,
                                               conn: Connection) -> None:
    task = submitted(api, conn, state="FullyExecuting")
    api.add("POST", f"{TASK_URL}/abort")
    api.add("GET", TASK_URL, json=task_doc(state="Cancelled"))
    assert task.abort() is task
    abort = api.calls[0].request
    assert abort.body is None and "Idempotency-Key" in abort.headers
    assert task.state == TaskState.CANCELLED
    assert len(api.calls) == 2


def test_timeline_gets_the_task_timeline(api: responses.RequestsMock,
                                         conn: Connection) -> None:
    task = submitted(api, conn, state="Success")
    doc = {"uuid": TASK_UUID, "submitted": 1765000000.25, "instances": [
        {"instanceId": 0, "attempt": 1, "state": "Success",
         "timeline": {"dispatched": 1765000000.5, "ended": 1765000000.75}}]}
    api.add("GET", f"{TASK_URL}/timeline", json=doc)
    assert task.timeline() == doc
    api.add("GET", f"{TASK_URL}/timeline", status=404, json={"message": "no such task"})
    with pytest.raises(MissingTaskException):
        task.timeline()
    assert [c.request.method for c in api.calls] == ["GET", "GET"]


def test_actions_need_a_submitted_task(conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    for action in (task.abort, task.delete, task.stdout, task.fresh_stderr,
                   task.update_resources, task.timeline):
        with pytest.raises(ResourceStateError, match="not submitted"):
            action()


def test_missing_task_on_action(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("POST", f"{TASK_URL}/abort", status=404, json={"message": "no such task"})
    with pytest.raises(MissingTaskException, match="no such task"):
        task.abort()


def test_delete_and_purge_buckets(api: responses.RequestsMock, conn: Connection,
                                  storage: FakeStorage) -> None:
    storage.buckets.update({"in": {"a": b"1"}, "out": {"b": b"2"}})
    task = submitted(api, conn, advancedResourceBuckets=[{"bucketName": "in"}],
                     resultBucket="out")
    api.add("DELETE", TASK_URL)
    task.delete(purge_resources=True, purge_results=True)
    assert api.calls[0].request.method == "DELETE"
    assert storage.buckets == {}
    assert task.state == TaskState.PENDING_DELETE and task.auto_update is False


def test_delete_keeps_buckets_by_default(api: responses.RequestsMock, conn: Connection,
                                         storage: FakeStorage) -> None:
    storage.buckets["out"] = {"b": b"2"}
    task = submitted(api, conn, resultBucket="out")
    api.add("DELETE", TASK_URL)
    task.delete()
    assert "out" in storage.buckets and storage.calls == []


def test_stdout_stderr_and_fresh_output(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("GET", f"{TASK_URL}/stdout", body="all out\n", content_type="text/plain")
    api.add("GET", f"{TASK_URL}/stderr/1", body="err 1\n", content_type="text/plain")
    api.add("POST", f"{TASK_URL}/stdout", body="new out\n", content_type="text/plain")
    api.add("POST", f"{TASK_URL}/stderr/0", body="", content_type="text/plain")
    assert task.stdout() == "all out\n"
    assert task.stderr(1) == "err 1\n"
    assert task.fresh_stdout() == "new out\n"
    assert task.fresh_stderr(instance_id=0) == ""
    assert [c.request.method for c in api.calls] == ["GET", "GET", "POST", "POST"]
    assert "Idempotency-Key" in api.calls[2].request.headers


def test_output_404_names_task_or_instance(api: responses.RequestsMock, conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("GET", f"{TASK_URL}/stdout/9", status=404, json={"message": "no instance 9"})
    api.add("GET", f"{TASK_URL}/stdout", status=404, json={"message": "no task"})
    with pytest.raises(MissingTaskInstanceException):
        task.stdout(9)
    with pytest.raises(MissingTaskException):
        task.stdout()


def test_update_resources_patches_without_body(api: responses.RequestsMock,
                                               conn: Connection) -> None:
    task = submitted(api, conn)
    api.add("PATCH", TASK_URL)
    api.add("GET", TASK_URL, json=task_doc())
    task.update_resources()
    patch = api.calls[0].request
    assert patch.method == "PATCH" and patch.body is None
    assert "Content-Type" not in patch.headers


def test_download_results_without_result_bucket(api: responses.RequestsMock, conn: Connection,
                                                tmp_path: Path, storage: FakeStorage) -> None:
    task = submitted(api, conn)
    api.add("GET", TASK_URL, json=task_doc())
    assert task.download_results(str(tmp_path / "o")) == str(tmp_path / "o")
    assert (tmp_path / "o").is_dir() and storage.calls == []


def test_repr_does_not_fetch(api: responses.RequestsMock, conn: Connection,
                             clock: FakeClock) -> None:
    task = submitted(api, conn)
    clock.now += 100
    assert repr(task) == f"<Task uuid='{TASK_UUID}' name='hello' state='Submitted'>"
    assert len(api.calls) == 0


def test_submit_loads_the_document_of_the_post_reply(api: responses.RequestsMock,
                                                     conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    api.add("POST", f"{API}/tasks", status=201, json=task_doc())
    task.submit()
    assert [c.request.method for c in api.calls] == ["POST"]  # no GET after it
    assert api.calls[0].request.headers["Prefer"] == "return=representation"
    assert task.uuid == TASK_UUID and task.state == TaskState.SUBMITTED
