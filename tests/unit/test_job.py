"""Job: submission to /jobs/, timespans, terminate/delete, its tasks, wait, listing."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import responses

from qcompute import (
    Connection,
    FieldError,
    Job,
    JobState,
    MissingJobException,
    MissingPoolException,
    ReadOnlyFieldError,
    ResourceStateError,
    Task,
    TaskState,
)

from .conftest import FakeClock
from .helpers import API, JOB_UUID, POOL_UUID, TASK_UUID, body, job_doc, pool_doc, task_doc

JOB_URL = f"{API}/jobs/{JOB_UUID}"


def submitted(api: responses.RequestsMock, conn: Connection, **doc: Any) -> Job:
    api.add("GET", JOB_URL, json=job_doc(**doc))
    job = conn.retrieve_job(JOB_UUID)
    api.calls.reset()
    return job


def test_submit_posts_to_jobs_with_a_trailing_slash(api: responses.RequestsMock,
                                                    conn: Connection) -> None:
    api.add("GET", f"{API}/pools/{POOL_UUID}", json=pool_doc())
    pool = conn.retrieve_pool(POOL_UUID)
    job = conn.create_job("pipeline", pool, shortname="pipe", use_dependencies=True)
    job.max_wall_time = timedelta(days=1, hours=2, minutes=3, seconds=4)
    job.tags = ["j"]
    job.completion_ttl = "0.01:00:00"
    assert job.state == JobState.UNSUBMITTED
    api.add("POST", f"{API}/jobs/", status=201, json={"uuid": JOB_UUID})
    api.add("GET", JOB_URL, json=job_doc(poolUuid=POOL_UUID))
    assert job.submit() is job
    post = api.calls[1].request
    assert (post.method, post.url) == ("POST", f"{API}/jobs/")
    assert body(api.calls[1]) == {
        "name": "pipeline", "shortname": "pipe", "poolUuid": POOL_UUID, "useDependencies": True,
        "tags": ["j"], "maxWallTime": "1.02:03:04", "completionTimeToLive": "0.01:00:00",
    }
    assert (job.uuid, job.state, job.pool_uuid) == (JOB_UUID, JobState.ACTIVE, POOL_UUID)


def test_minimal_job_document(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", f"{API}/jobs/", status=201, json={"uuid": JOB_UUID})
    api.add("GET", JOB_URL, json=job_doc())
    conn.create_job("pipeline").submit()
    assert body(api.calls[0]) == {"name": "pipeline", "poolUuid": None,
                                  "useDependencies": False, "tags": []}


def test_submit_404_names_the_pool(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", f"{API}/jobs/", status=404, json={"message": "no pool x"})
    with pytest.raises(MissingPoolException, match="no pool x"):
        conn.create_job("j", pool="x").submit()


def test_server_document_is_parsed(api: responses.RequestsMock, conn: Connection) -> None:
    job = submitted(api, conn, state="Terminating", previousState="Active")
    assert job.state == JobState.TERMINATING and job.previous_state == JobState.ACTIVE
    assert job.max_wall_time == timedelta(days=1, hours=3, minutes=16, seconds=50.5)  # ticks
    assert job.completion_ttl == timedelta(0)
    assert job.use_dependencies is True and job.tags == ["j"]
    assert job.creation_date == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
    assert job.last_modified == datetime(2026, 11, 21, 10, 0, 1, tzinfo=timezone.utc)
    assert submitted(api, conn, state="FullyExecuting").state == "FullyExecuting"


@pytest.mark.parametrize("value", ["1 day", "25:00:00", 3600, "-1.00:00:00"])
def test_bad_timespans_are_refused(conn: Connection, value: Any) -> None:
    with pytest.raises(FieldError):
        conn.create_job("j").max_wall_time = value


def test_a_job_cannot_change_once_submitted(api: responses.RequestsMock,
                                            conn: Connection) -> None:
    job = submitted(api, conn)
    for field, value in (("name", "x"), ("tags", []), ("max_wall_time", timedelta(1)),
                         ("use_dependencies", False), ("pool_uuid", "p")):
        with pytest.raises(ReadOnlyFieldError, match=f"Job.{field} cannot change"):
            setattr(job, field, value)
    job.commit()  # nothing changed: no request
    job.tags.append("x")
    with pytest.raises(ReadOnlyFieldError, match="Job.tags cannot change"):
        job.commit()
    assert len(api.calls) == 0


def test_terminate_then_delete(api: responses.RequestsMock, conn: Connection) -> None:
    job = submitted(api, conn)
    api.add("POST", f"{JOB_URL}/terminate")
    api.add("GET", JOB_URL, json=job_doc(state="Terminating"))
    api.add("DELETE", JOB_URL)
    api.add("DELETE", JOB_URL)
    assert job.terminate() is job and job.state == JobState.TERMINATING
    job.delete(force=True)
    job.delete()
    urls = [(c.request.method, c.request.url) for c in api.calls]
    assert urls == [("POST", f"{JOB_URL}/terminate"), ("GET", JOB_URL),
                    ("DELETE", f"{JOB_URL}?force=true"), ("DELETE", f"{JOB_URL}?force=false")]
    assert job.state == JobState.DELETING and job.auto_update is False


def test_missing_job(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("GET", f"{API}/jobs/nope", status=404, json={"message": "no job"})
    with pytest.raises(MissingJobException, match="no job"):
        conn.retrieve_job("nope")
    job = submitted(api, conn)
    api.add("POST", f"{JOB_URL}/terminate", status=404, json={"message": "gone"})
    with pytest.raises(MissingJobException):
        job.terminate()


def test_tasks_are_bound_to_the_connection(api: responses.RequestsMock,
                                           conn: Connection) -> None:
    job = submitted(api, conn)
    api.add("GET", f"{JOB_URL}/tasks", json=[{"uuid": TASK_UUID, "name": "t", "state": "Submitted",
                                              "jobUuid": JOB_UUID}])
    api.add("GET", f"{API}/tasks/{TASK_UUID}", json=task_doc(state="Success", jobUuid=JOB_UUID))
    (task,) = job.tasks()
    assert isinstance(task, Task) and task._conn is conn
    assert task.job_uuid == JOB_UUID and len(api.calls) == 1
    assert task.update(flushcache=True) is True  # the official SDK fails here
    assert task.state == TaskState.SUCCESS


def test_wait_until_completed(api: responses.RequestsMock, conn: Connection,
                              clock: FakeClock) -> None:
    job = submitted(api, conn)
    for state in ("Active", "Terminating", "Completed"):
        api.add("GET", JOB_URL, json=job_doc(state=state))
    assert job.wait() is True and job.state == JobState.COMPLETED
    assert clock.sleeps == pytest.approx([0.05, 0.075])


def test_wait_times_out(api: responses.RequestsMock, conn: Connection, clock: FakeClock) -> None:
    job = submitted(api, conn)
    api.add("GET", JOB_URL, json=job_doc(state="Active"))
    assert job.wait(timeout=3) is False
    assert sum(clock.sleeps) == pytest.approx(3)
    assert conn.create_job("j").wait() is False


def test_actions_need_a_submitted_job(conn: Connection) -> None:
    job = conn.create_job("j")
    for action in (job.terminate, job.delete, job.tasks):
        with pytest.raises(ResourceStateError, match="not submitted"):
            action()


def test_jobs_page_and_all_jobs(api: responses.RequestsMock, conn: Connection) -> None:
    api.add("POST", f"{API}/jobs/paginate", json={
        "data": [job_doc("j1")], "token": None, "nextToken": "t", "isTruncated": True})
    api.add("POST", f"{API}/jobs/paginate", json={
        "data": [job_doc("j2")], "token": "t", "nextToken": None, "isTruncated": False})
    assert [j.uuid for j in conn.all_jobs(tags="x")] == ["j1", "j2"]
    assert body(api.calls[0]) == {
        "filter": {"operator": "Equal", "field": "Tags", "value": "x"}, "token": None,
        "maximumResults": 1000}
    api.add("POST", f"{API}/jobs/paginate", json={
        "data": [job_doc("j2")], "token": "t", "nextToken": None, "isTruncated": False})
    page = conn.jobs_page(token="t", maximum=5)
    assert [j.uuid for j in page] == ["j2"] and not page.is_truncated
    assert body(api.calls[2]) == {"filter": None, "token": "t", "maximumResults": 5}


def test_tasks_of_a_job(api: responses.RequestsMock, conn: Connection) -> None:
    job = submitted(api, conn)
    task = conn.create_task("t", "docker-batch", 1, job=job)
    assert task._submit_document()["jobUuid"] == JOB_UUID
    with pytest.raises(TypeError):
        conn.create_task("t", "docker-batch", job=conn.create_job("unsubmitted"))
