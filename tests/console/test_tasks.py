"""The console's task pages in chromium, on the session's real cluster: the list, a task's page
with its live output, abort, delete and rerun-failed; screenshots for docs/console.rst."""
from __future__ import annotations

import json

import httpx
import pytest

from qcompute import MissingTaskException, TaskState
from tests.console.conftest import PHONE, shot
from tests.helpers import sh

# Instance 2 fails; the others succeed. Each says hello.
SWEEP = sh('echo "hello from ${INSTANCE_ID}"; echo "warning ${INSTANCE_ID}" >&2; '
           'test "${INSTANCE_ID}" -ne 2')
TICKER = sh('i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); sleep 0.3; done')


@pytest.fixture
def conn(console_server):
    connection = console_server.connection()
    yield connection
    connection.close()


def submit(conn, name: str, command: str, count: int = 1, tags=()):
    task = conn.create_task(name, "docker-batch", count)
    task.constants["DOCKER_CMD"] = command
    task.tags = list(tags)
    return task.submit()


def test_list_page_and_rerun_failed(conn, console_page, new_context, signed_in_state):
    task = submit(conn, "console sweep", SWEEP, 3, tags=["console", "sweep"])
    task.wait(timeout=60)
    assert task.state == TaskState.FAILURE
    page = console_page

    page.goto("/console/tasks")
    row = page.locator(f'tr[data-uuid="{task.uuid}"]')
    assert row.locator(".state").inner_text() == "Failure"
    assert "3/3" in row.inner_text()
    assert row.locator(".tag").all_inner_texts() == ["console", "sweep"]
    shot(page, "tasks.png")

    page.goto("/console/tasks?state=Failure&tag=sweep")  # the filters keep it
    assert page.locator(f'tr[data-uuid="{task.uuid}"]').count() == 1
    page.goto("/console/tasks?state=Success&tag=sweep")
    assert page.locator(f'tr[data-uuid="{task.uuid}"]').count() == 0

    page.goto("/console/tasks")
    page.click(f'tr[data-uuid="{task.uuid}"] a')
    page.wait_for_url(f"**/console/tasks/{task.uuid}")
    states = page.locator("#instances tbody tr .state").all_inner_texts()
    assert states == ["Success", "Success", "Failure"]
    assert "instance 2 exited with code 1" in page.locator("#task-errors").inner_text()
    page.wait_for_selector("#task-output[data-ended=true]")  # all output came, then "end"
    stdout = page.locator('pre[data-stream="stdout"]').inner_text()
    assert sorted(stdout.splitlines()) == [f"hello from {i}" for i in range(3)]
    assert "warning 2" in page.locator('pre[data-stream="stderr"]').inner_text()
    shot(page, "task.png", full_page=True)

    phone = new_context(viewport=PHONE, storage_state=signed_in_state).new_page()
    phone.goto(f"/console/tasks/{task.uuid}")
    phone.wait_for_selector("#task-output[data-ended=true]")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(phone, "task-phone.png")

    page.click("#rerun-failed")
    page.wait_for_url(lambda url: "/console/tasks/" in url and task.uuid not in url)
    rerun_uuid = page.url.rsplit("/", 1)[1]
    assert page.locator("h1").inner_text() == "console sweep (rerun of failed)"
    assert page.locator("#instances tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.instance)") == ["2"]
    rerun = conn.retrieve_task(rerun_uuid)
    assert rerun.labels["qcompute.rerunOf"] == task.uuid and rerun.tags == ["console", "sweep"]
    rerun.wait(timeout=60)
    # the same command fails again (the server's pace: as long as the API wait above allows)
    page.wait_for_selector("#task-state:text('Failure')", timeout=60_000)


def test_a_running_tasks_log_grows_then_abort_and_delete(conn, console_page):
    task = submit(conn, "console ticker", TICKER)
    page = console_page
    page.goto(f"/console/tasks/{task.uuid}")
    page.evaluate("window.notReloaded = true")
    stdout = page.locator('pre[data-stream="stdout"]')
    page.wait_for_function("n => document.querySelector('pre[data-stream=stdout]')"
                           ".textContent.split('\\n').length > n", arg=3)
    first = stdout.inner_text()
    page.wait_for_function("n => document.querySelector('pre[data-stream=stdout]')"
                           ".textContent.length > n", arg=len(first))
    second = stdout.inner_text()
    assert second.startswith(first) and len(second) > len(first)
    assert second.splitlines()[:3] == ["line 0", "line 1", "line 2"]
    # the running instance's telemetry, refreshed by the server's "tick" events
    page.wait_for_selector('tr[data-instance="0"] td:nth-child(5):has-text("MB")')
    assert page.evaluate("window.notReloaded") is True

    page.click("#abort")
    page.wait_for_selector("#task-state:text('Cancelled')", timeout=60_000)  # the grace period
    page.wait_for_selector("#task-output[data-ended=true]", timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    assert conn.retrieve_task(task.uuid).state == TaskState.CANCELLED

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    page.wait_for_url("**/console/tasks")
    assert page.locator(f'tr[data-uuid="{task.uuid}"]').count() == 0
    with pytest.raises(MissingTaskException):
        conn.retrieve_task(task.uuid)


def test_the_output_stream_resumes_from_its_last_event_id(conn, console_server,
                                                          signed_in_state):
    """A reconnecting EventSource sends the id of the last event it got (the offsets it
    reached): the stream goes on from there, then ends with the task."""
    task = submit(conn, "console resume", sh("echo first; echo second"))
    task.wait(timeout=60)
    value = next(c["value"] for c in signed_in_state["cookies"]
                 if c["name"] == "qcompute_console")
    url = f"{console_server.url}/console/tasks/{task.uuid}/events"
    headers = {"Cookie": f"qcompute_console={value}", "Last-Event-ID": "6-0"}
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [dict(line.split(": ", 1) for line in block.splitlines())
              for block in body.strip().split("\n\n")]
    assert events[0] == {"retry": "500"}
    assert [e.get("event") for e in events[1:]] == ["stdout", "state", "end"]
    assert json.loads(events[1]["data"]) == "second\n" and events[1]["id"] == "13-0"
    assert json.loads(events[-1]["data"]) == "Success"


def test_a_refused_action_is_shown_in_the_page(conn, console_page, console_server):
    """An htmx action the service refuses (abort a finished task) answers its message,
    aimed at the page's #flash."""
    task = submit(conn, "console done", sh("true"))
    task.wait(timeout=60)
    page = console_page
    page.goto(f"/console/tasks/{task.uuid}")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.post(f"/console/tasks/{task.uuid}/abort", headers={
        "Origin": console_server.url, "X-CSRF-Token": csrf, "HX-Request": "true"})
    assert response.status == 403
    assert response.headers["hx-retarget"] == "#flash"
    assert f"task {task.uuid} is already Success" in response.text()
