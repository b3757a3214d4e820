"""Two ``qcompute server`` processes on one PostgreSQL database and one external S3: either serves
any request, one runs the scheduler, and the other takes over when it is killed."""
from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest
import requests
import sqlalchemy as sa

from qcompute.server.bootstrap import read_token

from .conftest import ClusterProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(240)]

TAKEOVER_SECONDS = 10  # the promise: a standby takes over within 10 s


@contextlib.contextmanager
def _pair(data_dir, postgres, store):
    """Replicas ``a`` (started first: it takes the scheduler) and ``b`` (standby). They share
    the data dir (the owner's token, the sealing key, the output files) and the session's
    external S3 (a SeaweedFS of separate processes, users' keys from its IAM API)."""
    url = postgres.create_database(template=postgres.template)
    env = {"QCOMPUTE_SERVER_DATABASE_URL": url, "QCOMPUTE_SERVER_STORAGE": "external",
           "QCOMPUTE_SERVER_S3_URL": store.url,
           "QCOMPUTE_SERVER_S3_ADMIN_ACCESS_KEY": store.admin_key,
           "QCOMPUTE_SERVER_S3_ADMIN_SECRET_KEY": store.admin_secret,
           "QCOMPUTE_SERVER_LEADER_RETRY_SECONDS": "1"}
    a = ClusterProcess(data_dir, workers=4, env=env)
    b = ClusterProcess(data_dir, workers=4, env=env)
    started = []
    try:
        for replica in (a, b):
            replica.start()
            started.append(replica)
        engine = sa.create_engine(url)
        yield a, b, {"Authorization": read_token(a.config)}, engine
        engine.dispose()
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, postgres, external_s3):
    with _pair(tmp_path_factory.mktemp("replicas"), postgres, external_s3) as pair:
        yield pair


@pytest.fixture
def fresh_replicas(tmp_path, postgres, external_s3):
    """A pair of its own, for a test that kills one."""
    with _pair(tmp_path / "data", postgres, external_s3) as pair:
        yield pair


def _role(replica: ClusterProcess) -> str:
    return requests.get(f"{replica.url}/health", timeout=5).json()["role"]


def _submit(replica, headers, command: str, count: int = 1, **extra) -> str:
    doc = {"name": "replicas", "profile": "docker-batch", "instanceCount": count,
           "constants": [{"key": "DOCKER_CMD", "value": command}]}
    response = requests.post(f"{replica.url}/tasks", json=doc, headers={**headers, **extra},
                             timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def _until_final(replica, headers, uuid: str, window: float = 60) -> dict:
    deadline = time.monotonic() + window
    while True:
        task = requests.get(f"{replica.url}/tasks/{uuid}", params={"wait": 20, "until": "final"},
                            headers=headers, timeout=30).json()
        if task["state"] in ("Success", "Failure", "Cancelled") or time.monotonic() > deadline:
            return task
        time.sleep(0.2)


def test_either_replica_serves_and_the_standby_relays_to_the_scheduler(replicas):
    a, b, headers, _ = replicas
    assert (_role(a), _role(b)) == ("scheduler", "standby")
    uuid = _submit(b, headers, "echo from-b")  # the submit's wake-up goes to a's scheduler
    assert _until_final(a, headers, uuid)["state"] == "Success"
    stdout = requests.get(f"{b.url}/tasks/{uuid}/stdout", headers=headers, timeout=10).text
    assert "from-b" in stdout
    for replica in (a, b):
        listed = requests.get(f"{replica.url}/tasks", headers=headers, timeout=10).json()
        assert uuid in {t["uuid"] for t in listed}


def test_a_long_poll_on_the_standby_is_woken_by_a_change_made_through_the_scheduler(replicas):
    a, b, headers, _ = replicas
    uuid = _submit(a, headers, "sh -c 'sleep 2; echo done'")
    window = 60
    answer: dict = {}

    def poll() -> None:
        started = time.monotonic()
        answer["task"] = requests.get(
            f"{b.url}/tasks/{uuid}", params={"wait": window, "until": "final"},
            headers=headers, timeout=window + 10).json()
        answer["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=poll)
    thread.start()
    thread.join(window + 15)
    assert answer["task"]["state"] == "Success"
    # the server caps a wait (long_poll_max_seconds, 30 s by default): an answer that is
    # final well before the cap came from a wake-up, not from the end of the wait
    cap = requests.get(f"{b.url}/settings", headers=headers, timeout=5).json()
    assert answer["seconds"] < min(window, cap.get("taskWaitMaxSeconds", window)) - 5, answer


def test_an_idempotent_post_is_replayed_by_the_other_replica(replicas):
    a, b, headers, engine = replicas
    key = {"Idempotency-Key": "replicas-key-1"}
    doc = {"name": "idempotent-once", "profile": "docker-batch", "instanceCount": 1,
           "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    first = requests.post(f"{a.url}/tasks", json=doc, headers={**headers, **key}, timeout=30)
    again = requests.post(f"{b.url}/tasks", json=doc, headers={**headers, **key}, timeout=30)
    assert first.status_code == again.status_code == 201
    assert again.json()["uuid"] == first.json()["uuid"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT COUNT(*) FROM tasks WHERE name = 'idempotent-once'")
                          ).scalar() == 1


def test_killing_the_scheduler_holder_mid_run_loses_no_task_and_runs_nothing_twice(
        fresh_replicas):
    a, b, headers, engine = fresh_replicas
    tasks = [_submit(b, headers, "sh -c 'echo started-${INSTANCE_ID}; sleep 6; echo ended'",
                     count=3) for _ in range(2)]

    def running() -> int:
        with engine.connect() as db:
            return db.execute(sa.text(
                "SELECT COUNT(*) FROM instances WHERE state = 'Running'")).scalar()

    deadline = time.monotonic() + 60
    while running() < 4:  # the holder's 4 slots are busy
        assert time.monotonic() < deadline, "the instances did not start"
        time.sleep(0.2)
    a.kill()
    deadline = time.monotonic() + TAKEOVER_SECONDS
    while _role(b) != "scheduler":
        assert time.monotonic() < deadline, f"no takeover in {TAKEOVER_SECONDS} s"
        time.sleep(0.2)
    for uuid in tasks:
        assert _until_final(b, headers, uuid, window=120)["state"] == "Success"
    with engine.connect() as db:
        rows = db.execute(sa.text(
            "SELECT t.uuid, i.instance_id, i.attempt, i.infra_failures, i.state FROM instances i "
            "JOIN tasks t ON t.id = i.task_id")).all()
    requeued = 0
    for uuid, instance_id, attempt, infra_failures, state in rows:
        stdout = requests.get(f"{b.url}/tasks/{uuid}/stdout", headers=headers, timeout=10).text
        runs = stdout.count(f"started-{instance_id}\n")
        # every dispatch is an attempt; one that the killed holder ran (or had dispatched) was
        # recorded as an infra failure and re-queued: the last attempt is the only other run
        assert state == "Success" and attempt == 1 + infra_failures, (uuid, instance_id)
        assert 1 <= runs <= attempt, (uuid, instance_id, runs, attempt, json.dumps(stdout))
        requeued += infra_failures
    assert requeued >= 4  # the four that ran on the holder when it died
