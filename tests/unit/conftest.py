"""Fixtures for the SDK unit tests: isolated config, a fake clock, HTTP mocked with `responses`,
and an in-memory stand-in for the S3 adapter (real S3 is covered by the e2e tests)."""
from __future__ import annotations

import os
from typing import Any

import pytest
import responses

from qcompute import Connection

from .helpers import API, S3, TOKEN, FakeStorage


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """No QCOMPUTE_*/QARNOT_* variables and a default config path that does not exist."""
    for name in list(os.environ):
        if name.startswith(("QCOMPUTE_", "QARNOT_")):
            monkeypatch.delenv(name)
    default = tmp_path / "default-config" / "qcompute.conf"
    monkeypatch.setattr("qcompute.config.default_config_path", lambda: default)
    return default


class FakeClock:
    """Stands in for time.monotonic and the SDK's sleeps: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("qcompute._resource._clock", fake)
    monkeypatch.setattr("qcompute.task._sleep", fake.sleep)
    monkeypatch.setattr("qcompute._resource._sleep", fake.sleep)
    monkeypatch.setattr("qcompute._http._sleep", fake.sleep)
    return fake


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def conn(api: responses.RequestsMock) -> Connection:
    """A connection to a server without the long poll (as Qarnot's): its /settings is known."""
    connection = Connection(client_token=TOKEN, cluster_url=API, storage_url=S3)
    connection._settings_doc = {"storage": S3}
    return connection


@pytest.fixture
def storage(conn: Connection) -> FakeStorage:
    """Plug a FakeStorage into ``conn`` (so no GET /settings or /info is needed)."""
    fake = FakeStorage()
    conn._storage_client = fake  # type: ignore[assignment]
    return fake
