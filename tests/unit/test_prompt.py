"""The SDK at the prompt: follow(), raise_for_state()/run(check=True), Ctrl-C, instance states."""
from __future__ import annotations

from typing import Any

import pytest
import responses

from qcompute import (
    Connection,
    Error,
    QComputeError,
    ResourceStateError,
    Status,
    Task,
    TaskFailedError,
    TaskState,
)

from .conftest import FakeClock
from .helpers import API, POOL_UUID, TASK_UUID, pool_doc, task_doc

TASK_URL = f"{API}/tasks/{TASK_UUID}"
STDOUT = f"{TASK_URL}/stdout"


def _task(api: responses.RequestsMock, conn: Connection, **doc: Any) -> Task:
    api.add("GET", TASK_URL, json=task_doc(**doc))
    task = conn.retrieve_task(TASK_UUID)
    api.calls.reset()
    return task


def _long_poll(conn: Connection) -> Connection:
    conn._settings_doc = {"storage": "http://s3.test", "taskWaitMaxSeconds": 60}
    return conn


def _read(api: responses.RequestsMock, text: str, offset: int, complete: bool = False) -> None:
    headers = {"X-Output-Offset": str(offset)}
    if complete:
        headers["X-Output-Complete"] = "true"
    api.add("GET", STDOUT, body=text, headers=headers, content_type="text/plain")


# ----------------------------------------------------------------------------- follow
def test_follow_reads_from_offsets_held_by_the_server_and_buffers_partial_lines(
        api: responses.RequestsMock, conn: Connection, clock: FakeClock) -> None:
    task = _task(api, _long_poll(conn), state="FullyExecuting")
    _read(api, "one\ntw", 6)
    _read(api, "", 6)  # the hold ran out with nothing new
    _read(api, "o\r\nthr", 11)
    _read(api, "ee", 13, complete=True)  # final: the last line has no newline
    assert list(task.follow()) == ["one", "two", "three"]
    assert [c.request.params for c in api.calls] == [
        {"offset": "0", "wait": "60"}, {"offset": "6", "wait": "60"},
        {"offset": "6", "wait": "60"}, {"offset": "11", "wait": "60"}]
    assert clock.sleeps == []  # the server held the reads: no polling
    assert not [c for c in api.calls if c.request.method == "POST"]  # no fresh-read cursor


def test_follow_one_instance_of_stderr(api: responses.RequestsMock, conn: Connection) -> None:
    task = _task(api, _long_poll(conn), state="FullyExecuting")
    api.add("GET", f"{TASK_URL}/stderr/3", body="oops\n", content_type="text/plain",
            headers={"X-Output-Offset": "5", "X-Output-Complete": "true"})
    assert list(task.follow("stderr", instance=3)) == ["oops"]


def test_follow_slices_the_whole_stream_on_a_server_without_offsets(
        api: responses.RequestsMock, conn: Connection, clock: FakeClock) -> None:
    """Qarnot's API answers the whole stream and ignores ``offset``: the state is read before
    each read, so the read after the task is final holds everything."""
    task = _task(api, conn, state="FullyExecuting")
    api.add("GET", STDOUT, body="a\nb", content_type="text/plain")
    api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting"))
    api.add("GET", STDOUT, body="a\nb", content_type="text/plain")  # nothing new: sleep
    api.add("GET", TASK_URL, json=task_doc(state="Success"))
    api.add("GET", STDOUT, body="a\nbc\nd\n", content_type="text/plain")
    lines = task.follow()
    assert list(lines) == ["a", "bc", "d"]
    assert [c.request.url.split("?")[0] for c in api.calls] == [STDOUT, TASK_URL, STDOUT,
                                                                 TASK_URL, STDOUT]
    assert clock.sleeps == [0.05]


def test_follow_checks_its_arguments_at_once(api: responses.RequestsMock,
                                             conn: Connection) -> None:
    with pytest.raises(ResourceStateError, match="follow stdout"):
        conn.create_task("t", "docker-batch").follow()
    task = _task(api, conn)
    with pytest.raises(ValueError, match="stream"):
        task.follow("stdin")
    assert len(api.calls) == 0


def test_follow_a_pool_slot_until_the_pool_is_closed(api: responses.RequestsMock,
                                                     conn: Connection) -> None:
    """Pools share OutputMethods: on a server without offsets the pool is refreshed first."""
    pool_url = f"{API}/pools/{POOL_UUID}"
    api.add("GET", pool_url, json=pool_doc(state="FullyExecuting"))
    pool = conn.retrieve_pool(POOL_UUID)
    api.add("GET", f"{pool_url}/stdout/1", body="ready\n", content_type="text/plain")
    api.add("GET", pool_url, json=pool_doc(state="Closed"))
    api.add("GET", f"{pool_url}/stdout/1", body="ready\nbye\n", content_type="text/plain")
    assert list(pool.follow(instance=1)) == ["ready", "bye"]


# ----------------------------------------------------------------------------- raise_for_state
def test_raise_for_state_carries_errors_and_the_stderr_tail(
        api: responses.RequestsMock, conn: Connection) -> None:
    errors = [{"code": "instance_failed", "message": "instance 0 exited with 3"}]
    task = _task(api, conn, state="Failure", errors=errors)
    api.add("GET", f"{TASK_URL}/stderr", body="".join(f"e{n}\n" for n in range(30)),
            content_type="text/plain")
    with pytest.raises(TaskFailedError) as caught:
        task.raise_for_state()
    failure = caught.value
    assert isinstance(failure, QComputeError)
    assert failure.task is task and failure.state == TaskState.FAILURE
    assert failure.errors == [Error("instance_failed", "instance 0 exited with 3")]
    assert failure.stderr_tail.splitlines() == [f"e{n}" for n in range(10, 30)]
    text = str(failure)
    assert text.splitlines()[:3] == [
        f"task 'hello' ({TASK_UUID}) ended in Failure",
        "  error: instance_failed: instance 0 exited with 3",
        "  last 20 lines of stderr:"]
    assert text.endswith("    e29")


@pytest.mark.parametrize("state", ["Success", "FullyExecuting"])
def test_raise_for_state_passes_a_task_that_did_not_fail(
        api: responses.RequestsMock, conn: Connection, state: str) -> None:
    task = _task(api, conn, state=state)
    assert task.raise_for_state() is task
    assert len(api.calls) == 0


def test_run_with_check_raises_for_a_cancelled_task(api: responses.RequestsMock,
                                                    conn: Connection) -> None:
    task = conn.create_task("hello", "docker-batch")
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", TASK_URL, json=task_doc())
    api.add("GET", TASK_URL, json=task_doc(state="Cancelled"))
    api.add("GET", f"{TASK_URL}/stderr", body="", content_type="text/plain")
    with pytest.raises(TaskFailedError, match="ended in Cancelled$"):
        task.run(check=True)


def test_run_without_check_returns_a_failed_task(api: responses.RequestsMock,
                                                 conn: Connection) -> None:
    task = conn.create_task("hello", "docker-batch")
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", TASK_URL, json=task_doc())
    api.add("GET", TASK_URL, json=task_doc(state="Failure"))
    assert task.run() is task and task.state == TaskState.FAILURE


# ----------------------------------------------------------------------------- Ctrl-C
def _interrupt(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_in_wait_names_the_task_and_the_way_back(
        api: responses.RequestsMock, conn: Connection, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(api, conn, state="FullyExecuting")
    monkeypatch.setattr(Task, "_fetch", _interrupt)
    with pytest.raises(KeyboardInterrupt) as caught:
        task.wait()
    assert caught.value.__suppress_context__  # raised from None: no internals in the trace
    assert capsys.readouterr().err == (
        f"qcompute: interrupted: task 'hello' ({TASK_UUID}) keeps running on the cluster\n"
        f"  wait again:  conn.retrieve_task('{TASK_UUID}').resume()\n"
        f"  abort it:    conn.retrieve_task('{TASK_UUID}').abort()\n")


def test_ctrl_c_with_abort_on_interrupt_aborts(
        api: responses.RequestsMock, conn: Connection, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(api, conn, state="FullyExecuting")
    monkeypatch.setattr(Task, "_wait", _interrupt)
    api.add("POST", f"{TASK_URL}/abort", json={})
    api.add("GET", TASK_URL, json=task_doc(state="Cancelled"))
    with pytest.raises(KeyboardInterrupt):
        task.resume(abort_on_interrupt=True)
    assert capsys.readouterr().err == (
        f"qcompute: interrupted: task 'hello' ({TASK_UUID}) was aborted\n")


def test_ctrl_c_while_submitting(api: responses.RequestsMock, conn: Connection,
                                 capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Task, "submit", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        conn.create_task("hello", "docker-batch").run()
    assert "interrupted while submitting task 'hello'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- instance states
def test_instance_states_from_the_status() -> None:
    status = Status.from_json({
        "instanceCount": 12, "succeededRange": "0-4", "failedRange": "7", "executedRange":
        "0-4,7,9", "runningInstancesInfo": {"perRunningInstanceInfo": [
            {"instanceId": 5, "phase": "execution"}, {"instanceId": 6, "phase": "download"}]}})
    assert status is not None
    assert status.instance_states() == {"queued": 3, "running": 2, "done": 5, "failed": 1,
                                        "cancelled": 1}


def test_live_progress_shows_instance_states(api: responses.RequestsMock, conn: Connection,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr("tqdm.std.tqdm.set_postfix_str",
                        lambda self, text, refresh=True: shown.append(text))
    task = _task(api, conn, state="FullyExecuting")
    running = {"instanceCount": 3, "executedRange": "", "runningInstancesInfo": {
        "perRunningInstanceInfo": [{"instanceId": 0, "phase": "execution"}]}}
    ended = {"instanceCount": 3, "succeededRange": "0-1", "failedRange": "2",
             "executedRange": "0-2"}
    api.add("GET", TASK_URL, json=task_doc(state="FullyExecuting", status=running))
    api.add("GET", TASK_URL, json=task_doc(state="Failure", status=ended))
    assert task.wait(live_progress=True) is True
    assert shown == ["queued 2 · running 1 · done 0", "queued 0 · running 0 · done 2 · failed 1"]


def test_ctrl_c_while_following_hides_the_http_internals(
        api: responses.RequestsMock, conn: Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(api, conn, state="FullyExecuting")
    monkeypatch.setattr(conn._http, "request", _interrupt)
    with pytest.raises(KeyboardInterrupt) as caught:
        next(task.follow())
    assert caught.value.__suppress_context__


def test_ctrl_c_after_the_task_ended_says_so(
        api: responses.RequestsMock, conn: Connection, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    task = _task(api, conn, state="Success")
    monkeypatch.setattr(Task, "download_results", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        task.resume(output_dir="out", abort_on_interrupt=True)  # nothing left to abort
    assert capsys.readouterr().err.splitlines() == [
        f"qcompute: interrupted: task 'hello' ({TASK_UUID}) had ended (Success)",
        f"  its results:  conn.retrieve_task('{TASK_UUID}').download_results(DIR)"]
