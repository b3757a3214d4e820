"""No console user sees or touches another's tasks; the cluster owner may look at a user's
tasks, pools and jobs with ``?owner=`` but, as in the API, not change them."""
from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

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


def refused(page, origin: str, method: str, path: str) -> str:
    """The text of a 403 the console answers an action (with this session's CSRF token)."""
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.fetch(path, method=method, max_redirects=0,
                                  headers={"Origin": origin, "X-CSRF-Token": csrf})
    assert response.status == 403, (method, path, response.status)
    return response.text()


def test_the_owner_looks_at_a_users_task_but_cannot_act_on_it(console_server, bob,
                                                              console_page):
    bobs = console_server.connection(client_token=bob["token"])
    task = submit(bobs, "bob's running task", sh("sleep 60"))
    page = console_page
    page.goto(f"/console/tasks/{task.uuid}?owner=bob%40console.test")
    assert page.locator("#not-yours").inner_text().startswith("A task of bob@console.test")
    for button in ("#abort", "#delete", "#rerun-failed"):
        assert page.locator(button).count() == 0
    for method, path in (("POST", "/abort"), ("POST", "/rerun-failed"), ("DELETE", "")):
        text = refused(page, console_server.url, method,
                       f"/console/tasks/{task.uuid}{path}?owner=bob%40console.test")
        assert "only bob@console.test can change" in text
    assert bobs.retrieve_task(task.uuid).state not in ("Cancelled", "PendingCancel")
    bobs.retrieve_task(task.uuid).abort()
    bobs.close()


def test_the_owner_filters_pools_and_jobs_by_owner_and_cannot_act_on_them(console_server, bob,
                                                                          console_page):
    api = httpx.Client(base_url=console_server.url, headers={"Authorization": bob["token"]})
    pool = api.post("/pools", json={"name": "bob's pool", "profile": "docker-batch",
                                    "instanceCount": 1}).json()["uuid"]
    job = api.post("/jobs", json={"name": "bob's job", "poolUuid": pool}).json()["uuid"]
    task = api.post("/tasks", json={"name": "bob's job task", "jobUuid": job,
                                    "constants": [{"key": "DOCKER_CMD", "value": "true"}]})
    assert task.status_code == 201, task.text
    page = console_page
    origin = console_server.url
    try:
        for kind, uuid, actions in (("pools", pool, ("close", "delete")),
                                    ("jobs", job, ("terminate", "delete"))):
            page.goto(f"/console/{kind}")
            assert page.locator(f"tr[data-uuid='{uuid}']").count() == 0  # the owner's own
            page.select_option("select[name=owner]", "bob@console.test")
            page.click("text=Filter")
            page.wait_for_url(f"**/console/{kind}?owner=*")
            assert page.locator("h1").inner_text() == f"{kind.capitalize()} of bob@console.test"
            page.click(f"tr[data-uuid='{uuid}'] a")
            page.wait_for_url(f"**/console/{kind}/{uuid}?owner=bob%40console.test")
            assert page.locator("#not-yours").count() == 1
            assert page.locator("main button").count() == 0  # no action offered
            for action in actions:
                text = refused(page, origin, "POST",
                               f"/console/{kind}/{uuid}/{action}?owner=bob%40console.test")
                assert "only bob@console.test can change" in text
        page.goto(f"/console/jobs/{job}?owner=bob%40console.test")  # links keep the owner
        page.click("#job-tasks a")
        page.wait_for_url(f"**/console/tasks/{task.json()['uuid']}?owner=bob%40console.test")
        expect(page.locator("h1")).to_have_text("bob's job task")
        assert api.get(f"/pools/{pool}").json()["state"] not in ("Closing", "Closed")
        assert api.get(f"/jobs/{job}").json()["state"] == "Active"
        assert page.request.get("/console/pools?owner=nobody%40x.org").status == 404
    finally:
        api.post(f"/jobs/{job}/terminate")
        api.delete(f"/pools/{pool}")
        api.close()
