"""Console tests: the session's real cluster (tests/conftest.py ``cluster``) driven by Debian's
chromium through Playwright, one browser per session.

Every browser context made here records each request its pages make; a test whose pages sent
any request off the server's origin fails (``pytest_runtest_call`` below).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from qcompute.server.bootstrap import read_token

CHROMIUM = "/usr/bin/chromium"  # Debian's: Playwright cannot download its own browsers here
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SHOTS = Path(__file__).parents[2] / "docs" / "_static" / "console"  # used by docs/console.rst


def pytest_collection_modifyitems(items):
    for item in items:
        if "console" in item.path.parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.cluster)


def foreign(urls: list[str], origin: str) -> list[str]:
    """The URLs that left ``origin`` (``data:``/``blob:``/``about:`` stay in the page)."""
    return [u for u in urls if not (u.startswith(origin + "/") or u == origin
                                    or u.split(":", 1)[0] in ("data", "blob", "about"))]


def shot(page, name: str, full_page: bool = False) -> None:
    """Save a screenshot of the page for the docs (``docs/_static/console/<name>``)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=full_page)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    recorded = getattr(item, "console_requests", None)
    if recorded is not None:
        left = foreign(recorded["urls"], recorded["origin"])
        assert not left, f"the console made requests off {recorded['origin']}: {left}"
    return result


@pytest.fixture(scope="session")
def console_server(cluster):
    """The running server (tests/conftest.py's session cluster) and its origin."""
    return cluster


@pytest.fixture(scope="session")
def owner_token(console_server) -> str:
    return read_token(console_server.config)


@pytest.fixture(scope="package")  # ended with tests/console: its event loop runs in this thread
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def new_context(request, browser, console_server):
    """``new_context(**options)``: a browser context on the server's origin (1280×800 unless
    told), whose every request is recorded for the origin check; closed after the test."""
    origin = console_server.url
    recorded = {"origin": origin, "urls": []}
    request.node.console_requests = recorded
    made = []

    def make(**options):
        context = browser.new_context(**{"viewport": DESKTOP, "base_url": origin, **options})
        context.on("request", lambda r: recorded["urls"].append(r.url))
        context.set_default_timeout(15_000)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


@pytest.fixture(scope="package")
def signed_in_state(browser, console_server, owner_token):
    """The cookies of a session signed in as the cluster owner (signed in once, by the form)."""
    context = browser.new_context(base_url=console_server.url)
    page = context.new_page()
    page.goto("/console/login")
    page.fill("#token", owner_token)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/tasks")
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture
def console_page(new_context, signed_in_state):
    """A page signed in as the cluster owner, at 1280×800."""
    return new_context(storage_state=signed_in_state).new_page()


@pytest.fixture
def signed_out_page(new_context):
    return new_context().new_page()
