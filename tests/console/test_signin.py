"""Signing in and out of the console, and its CSRF and origin guards."""
from __future__ import annotations

import httpx

from tests.console.conftest import foreign, shot


def test_a_page_asks_to_sign_in_first(signed_out_page):
    signed_out_page.goto("/console/tasks")
    assert signed_out_page.url.endswith("/console/login?next=/console/tasks")
    assert signed_out_page.locator("h1").inner_text() == "Sign in"


def test_a_bad_token_is_refused_and_a_good_one_opens_the_task_list(signed_out_page,
                                                                    owner_token):
    page = signed_out_page
    page.goto("/console/login")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert page.locator("#signin-error").inner_text() == "invalid token"
    shot(page, "signin.png")
    page.fill("#token", owner_token)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/tasks")
    assert page.locator("h1").inner_text() == "Tasks"
    cookie = next(c for c in page.context.cookies() if c["name"] == "qcompute_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["secure"]
    assert owner_token not in cookie["value"]  # sealed, never the raw token


def test_signing_out_ends_the_session(console_page):
    console_page.goto("/console/tasks")
    console_page.click("text=Sign out")
    console_page.wait_for_url("**/console/login")
    console_page.goto("/console/tasks")
    assert "/console/login" in console_page.url


def test_a_post_without_the_csrf_token_is_refused(console_page, console_server):
    """Same origin and a signed-in cookie, but no CSRF token: 403 with a clear message."""
    console_page.goto("/console/tasks")
    response = console_page.request.post("/console/logout",
                                         headers={"Origin": console_server.url})
    assert response.status == 403
    assert "CSRF token is missing" in response.text()


def test_a_post_from_another_origin_is_refused(console_page):
    console_page.goto("/console/tasks")
    token = console_page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = console_page.request.post("/console/logout", headers={
        "Origin": "http://evil.example", "X-CSRF-Token": token})
    assert response.status == 403
    assert "own origin" in response.text()


def test_the_origin_check_catches_a_request_elsewhere(console_page, console_server, request):
    """The check that guards every test sees a request to another origin (here ``localhost``
    for ``127.0.0.1``); the record is then cleared so this test passes."""
    elsewhere = console_server.url.replace("127.0.0.1", "localhost") + "/health"
    console_page.goto(elsewhere)
    recorded = request.node.console_requests
    assert foreign(recorded["urls"], recorded["origin"]) == [elsewhere]
    recorded["urls"].clear()


def test_the_api_does_not_take_the_console_cookie(console_server, signed_in_state):
    """The cookie signs in the console only: the API still wants the bearer token."""
    cookies = {c["name"]: c["value"] for c in signed_in_state["cookies"]}
    response = httpx.get(f"{console_server.url}/tasks", cookies=cookies)
    assert response.status_code == 401
