"""The owner's users page in chromium: add a user (its token shown once, and it signs in),
rotate a token (the old one is refused), remove a user; bad input named on the page."""
from __future__ import annotations

import secrets

import httpx

from tests.console.conftest import shot
from tests.console.test_tasks import submit
from tests.helpers import sh


def sign_in(new_context, token: str):
    """A new browser signed in with ``token``, or left on the sign-in page with its error."""
    page = new_context().new_page()
    page.goto("/console/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def add_user(page, email: str) -> None:
    page.goto("/console/users")
    page.fill("#add-user input[name=email]", email)
    if page.locator("#add-user input[name=allow_unsandboxed]").count():  # this test cluster
        page.check("#add-user input[name=allow_unsandboxed]")
    with page.expect_navigation():
        page.click("#add-user button[type=submit]")


def test_add_a_user_then_rotate_its_token_then_remove_it(console_page, new_context,
                                                       console_server):
    email = f"dana{secrets.token_hex(3)}@example.org"
    page = console_page
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
    add_user(page, email)
    assert page.locator("#issued h2").inner_text() == f"New user {email}"
    token = page.locator("#issued-token").inner_text()
    assert page.locator(f"#user-list tr[data-email='{email}']").count() == 1
    shot(page, "users.png")
    dana = sign_in(new_context, token)
    assert dana.url.endswith("/console/tasks") and dana.locator(".who").inner_text() == email

    row = page.locator(f"#user-list tr[data-email='{email}']")
    with page.expect_navigation():
        row.locator("button.rotate").click()
    assert page.locator("#issued h2").inner_text() == f"New token of {email}"
    rotated = page.locator("#issued-token").inner_text()
    assert rotated != token
    assert sign_in(new_context, token).locator("#signin-error").inner_text() == "invalid token"
    dana.goto("/console/tasks")  # its session held the old token: signed out
    assert "/console/login" in dana.url
    assert sign_in(new_context, rotated).url.endswith("/console/tasks")

    with page.expect_navigation():
        page.locator(f"#user-list tr[data-email='{email}'] button.remove").click()
    assert page.locator("#removed").inner_text().startswith(f"Removed {email}")
    assert page.locator(f"#user-list tr[data-email='{email}']").count() == 0
    assert sign_in(new_context, rotated).locator("#signin-error").inner_text() == "invalid token"
    answer = httpx.get(f"{console_server.url}/tasks", headers={"Authorization": rotated})
    assert answer.status_code == 401


def test_bad_input_is_named_on_the_page(console_page):
    page = console_page
    add_user(page, "owner@qcompute.local")
    assert "user owner@qcompute.local already exists" in page.locator("#user-error").inner_text()
    add_user(page, "bad!name@example.org")  # a valid e-mail, but not an S3 access key
    assert "may hold only letters" in page.locator("#user-error").inner_text()
    assert page.locator("#add-user input[name=email]").input_value() == "bad!name@example.org"
    assert page.locator("#issued").count() == 0


def test_a_user_with_unfinished_tasks_is_removed_only_with_force(console_page, console_server,
                                                               owner_token):
    email = f"erin{secrets.token_hex(3)}@example.org"
    answer = httpx.post(f"{console_server.url}/admin/users", json={
        "email": email, "allowUnsandboxed": True}, headers={"Authorization": owner_token})
    assert answer.status_code == 201, answer.text
    token = answer.json()["token"]
    erins = console_server.connection(client_token=token)
    submit(erins, "erin's long task", sh("sleep 120"))
    erins.close()
    page = console_page
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto("/console/users")
    with page.expect_navigation():
        page.locator(f"#user-list tr[data-email='{email}'] button.remove").click()
    assert "1 unfinished task(s)" in page.locator("#user-error").inner_text()
    with page.expect_navigation():
        page.click("#remove-force")
    assert "1 task(s) deleted" in page.locator("#removed").inner_text()
    assert page.locator(f"#user-list tr[data-email='{email}']").count() == 0
    answer = httpx.get(f"{console_server.url}/tasks", headers={"Authorization": token})
    assert answer.status_code == 401
