"""No console user sees or touches another's tasks; the cluster owner may look at a user's
tasks with ``?owner=``."""
from __future__ import annotations

import httpx
import pytest

from tests.console.test_tasks import submit
from tests.helpers import sh


@pytest.fixture(scope="module")
def bob(console_server, owner_token):
    """A second user, and the owner's task that bob must not reach."""
    response = httpx.post(f"{console_server.url}/admin/users",
                          json={"email": "bob@console.test", "allowUnsandboxed": True},
                          headers={"Authorization": owner_token})
    assert response.status_code == 201, response.text
    return response.json()


def sign_in(new_context, token: str):
    page = new_context().new_page()
    page.goto("/console/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/tasks")
    return page


def test_a_user_cannot_reach_anothers_task(console_server, bob, new_context):
    conn = console_server.connection()
    task = submit(conn, "owner's secret task", sh("sleep 30"))
    page = sign_in(new_context, bob["token"])
    assert page.locator(f'tr[data-uuid="{task.uuid}"]').count() == 0
    assert page.locator("nav a", has_text="Users").count() == 0  # the owner's links only

    for path in (f"/console/tasks/{task.uuid}", f"/console/tasks/{task.uuid}/status",
                 f"/console/tasks/{task.uuid}/events"):
        response = page.request.get(path, max_redirects=0)
        assert response.status == 404, path
        assert f"task {task.uuid} not found" in response.text()
    response = page.request.get("/console/tasks?owner=owner%40qcompute.local")
    assert response.status == 403 and "only the cluster owner" in response.text()

    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    headers = {"Origin": console_server.url, "X-CSRF-Token": csrf}
    for method, path in (("POST", "abort"), ("POST", "rerun-failed"), ("DELETE", "")):
        response = page.request.fetch(f"/console/tasks/{task.uuid}/{path}".rstrip("/"),
                                      method=method, headers=headers)
        assert response.status == 404, (method, path, response.text())
    assert conn.retrieve_task(task.uuid).state not in ("Cancelled", "PendingCancel")
    conn.retrieve_task(task.uuid).abort()
    conn.close()


def test_the_owner_filters_by_owner(console_server, bob, console_page):
    bobs = console_server.connection(client_token=bob["token"])
    task = submit(bobs, "bob's task", sh("echo bob"))
    task.wait(timeout=60)
    page = console_page
    page.goto("/console/tasks")
    assert page.locator(f'tr[data-uuid="{task.uuid}"]').count() == 0  # the owner's own first
    page.select_option("select[name=owner]", "bob@console.test")
    page.click("text=Filter")
    page.wait_for_url("**/console/tasks?owner=*")
    assert page.locator("h1").inner_text() == "Tasks of bob@console.test"
    page.click(f'tr[data-uuid="{task.uuid}"] a')
    page.wait_for_selector("#task-output[data-ended=true]")
    assert page.locator('pre[data-stream="stdout"]').inner_text() == "bob\n"
    bobs.close()
