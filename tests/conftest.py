"""Fixtures shared by every suite: one real SeaweedFS per test session, one throwaway PostgreSQL
server per test session (started by the first test that needs it), and one real embedded
cluster per test session for ``tests/e2e`` and ``tests/compat`` (all stopped by PID)."""
from __future__ import annotations

import json
import os
import sys

import pytest

from qcompute.server.testing import ClusterProcess
from tests.helpers import s3_client, start_seaweed


@pytest.fixture(autouse=True, scope="session")
def _private_etag_cache(tmp_path_factory):
    """The SDK's ETag cache goes to a temporary dir, not the user's ~/.cache (subprocesses too)."""
    previous = os.environ.get("QCOMPUTE_CACHE_DIR")
    os.environ["QCOMPUTE_CACHE_DIR"] = str(tmp_path_factory.mktemp("etag-cache"))
    yield
    if previous is None:
        os.environ.pop("QCOMPUTE_CACHE_DIR", None)
    else:
        os.environ["QCOMPUTE_CACHE_DIR"] = previous


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory):
    """The clusters `qcompute up` records go to a temporary dir, not the user's ~/.local/state
    (subprocesses too)."""
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    weed = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield weed
    weed.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (tests/postgres.py) with a template database migrated to
    the newest revision: ``postgres.create_database(template=postgres.template)`` copies it."""
    from cryptography.fernet import Fernet

    from qcompute.server.crypto import Sealer
    from qcompute.server.db import make_engine, migrate
    from tests.postgres import PostgresServer

    def migrated(url: str) -> None:
        engine = make_engine(url)
        migrate(engine, Sealer(Fernet.generate_key()))
        engine.dispose()

    server = PostgresServer()
    server.start()
    try:
        server.make_template(migrated)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_admin(seaweed):
    """A boto3 S3 client with the admin identity."""
    return s3_client(seaweed)


@pytest.fixture(scope="session")
def external_s3(tmp_path_factory):
    """A SeaweedFS cluster of separate ``weed`` processes (master, volume, filer, s3 with IAM)
    standing in for an S3 store run by someone else (``tests/external_s3.py``)."""
    from tests.external_s3 import SeaweedCluster

    store = SeaweedCluster(tmp_path_factory.mktemp("external-s3"))
    store.start()
    yield store
    store.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """``qcompute server`` (SeaweedFS, SQLite, the local executor) on free loopback ports; the
    same process for the e2e and compat suites. ``tests/server`` has its own ``cluster``.
    Instances see this interpreter's installation read-only, so a task can run
    ``sys.executable`` with boto3 and the SDKs, as a user would install them on the host."""
    running = ClusterProcess(tmp_path_factory.mktemp("cluster"), env={
        "QCOMPUTE_SERVER_INSTANCE_RO_PATHS": json.dumps([sys.prefix])})
    running.start()
    yield running
    running.stop()


def pytest_collection_modifyitems(items):
    """``-m "not cluster"`` runs the unit and API suites alone; ``-m "not slow"`` skips the
    fault and load tests that start clusters of their own."""
    for item in items:
        if any(part in ("e2e", "compat") for part in item.path.parts):
            item.add_marker(pytest.mark.cluster)
