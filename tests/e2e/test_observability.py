"""What an operator watches, on a real cluster: ``/metrics`` (Prometheus) and the server log's
story (one line per transition; JSON when asked; the access log apart)."""
from __future__ import annotations

import json
import os

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qcompute import TaskState
from qcompute.server.bootstrap import read_token
from qcompute.server.logs import ACCESS_LOG_FILE
from tests.helpers import sh, wait_for

from .conftest import ClusterProcess


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """A cluster of its own, logging in JSON (and its access log in its data dir, the
    default)."""
    running = ClusterProcess(tmp_path_factory.mktemp("observed"), workers=2,
                             env={"QCOMPUTE_SERVER_LOG_FORMAT": "json"})
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def owner(observed):
    connection = observed.connection()
    yield connection
    connection.close()


def scrape(cluster: ClusterProcess) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics``, parsed: {(name, sorted labels): value}."""
    token = read_token(cluster.config)
    reply = requests.get(f"{cluster.url}/metrics", timeout=30,
                         headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.text)
            for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run(conn, name: str, command: str):
    task = conn.create_task(name, "docker-batch")
    task.constants["DOCKER_CMD"] = command
    task.run()
    return task


def test_metrics_move_as_tasks_run_fail_and_are_cancelled(observed, owner):
    before = scrape(observed)
    assert value(before, "qcompute_scheduler_leader") == 1
    assert value(before, "qcompute_executor_slots") == 2
    assert value(before, "qcompute_part_up", part="storage") == 1
    assert value(before, "qcompute_part_up", part="database") == 1

    assert run(owner, "metrics ok", "true").state == TaskState.SUCCESS
    assert run(owner, "metrics bad", sh("exit 3")).state == TaskState.FAILURE
    long = owner.create_task("metrics long", "docker-batch")
    long.constants["DOCKER_CMD"] = "sleep 120"
    long.submit()
    wait_for(lambda: long.update(True) is not None and long.state == TaskState.FULLY_EXECUTING,
             timeout=60)
    during = scrape(observed)
    long.abort()
    long.wait(timeout=60)
    after = scrape(observed)

    assert value(during, "qcompute_instances", state="Running") == 1
    assert value(during, "qcompute_executor_running") == 1
    assert value(during, "qcompute_tasks", state="FullyExecuting") >= 1
    outcomes = "qcompute_instance_outcomes_total"
    for outcome, failure, more in (("succeeded", "none", 1), ("failed", "application", 1),
                                   ("cancelled", "cancelled", 1)):
        assert value(after, outcomes, outcome=outcome, failure_class=failure) == \
            value(before, outcomes, outcome=outcome, failure_class=failure) + more
    assert value(after, "qcompute_tasks", state="Success") == \
        value(before, "qcompute_tasks", state="Success") + 1
    assert value(after, "qcompute_tasks", state="Failure") == \
        value(before, "qcompute_tasks", state="Failure") + 1
    assert value(after, "qcompute_instances", state="Running") == 0
    assert value(after, "qcompute_dispatch_latency_seconds_count") == \
        value(before, "qcompute_dispatch_latency_seconds_count") + 3
    posts = ("qcompute_api_request_duration_seconds_count",
             {"route": "/tasks", "method": "POST", "status": "201"})
    assert value(after, posts[0], **posts[1]) == value(before, posts[0], **posts[1]) + 3


def test_metrics_are_the_owners(observed, owner):
    nobody = requests.get(f"{observed.url}/metrics", timeout=30)
    assert nobody.status_code == 401
    assert nobody.json()["code"] == "unauthorized"
    user = owner._http.post("/admin/users", json={"email": f"eve.{os.getpid()}@example.com"})
    other = requests.get(f"{observed.url}/metrics", timeout=30,
                         headers={"Authorization": f"Bearer {user['token']}"})
    assert other.status_code == 403
    assert other.json() == {"message": "only the cluster owner can read the metrics",
                            "code": "owner_only"}


def _story(cluster: ClusterProcess, uuid: str) -> list[dict]:
    """The JSON transition lines of one object in the server's log."""
    lines = []
    for line in (cluster.data_dir / "server.log").read_text().splitlines():
        if line.startswith("{") and uuid in line:
            record = json.loads(line)
            if record["logger"] == "qcompute.transitions" and record["uuid"] == uuid:
                lines.append(record)
    return lines


def test_the_log_tells_each_tasks_story_in_json(observed, owner):
    ok = run(owner, "story ok", sh("echo done"))
    bad = run(owner, "story bad", sh("exit 7"))

    story = wait_for(lambda: (s := _story(observed, ok.uuid)) and s[-1]["event"] == "ended"
                     and s, timeout=10)
    assert [r["event"] for r in story] == ["submitted", "dispatched", "running", "ended"]
    assert [r["state"] for r in story][0] == "Submitted"
    end = story[-1]
    assert (end["state"], end["exit_code"], end["failure"], end["kind"]) == \
        ("Success", 0, None, "task")
    assert end["instances"] == {"Success": 1}
    assert end["level"] == "INFO" and end["time"]
    assert end["message"].startswith(f"task {ok.uuid} ended state=Success")

    failed = wait_for(lambda: (s := _story(observed, bad.uuid)) and s[-1]["event"] == "ended"
                      and s[-1], timeout=10)
    assert (failed["state"], failed["exit_code"], failed["failure"]) == \
        ("Failure", 7, "application")
    assert failed["previous_state"] in ("FullyExecuting", "FullyDispatched")


def test_access_lines_stay_out_of_the_story(observed, owner):
    run(owner, "access", "true")
    server_log = (observed.data_dir / "server.log").read_text()
    access = [json.loads(line) for line in
              (observed.data_dir / ACCESS_LOG_FILE).read_text().splitlines()]
    assert {r["logger"] for r in access} == {"uvicorn.access"}
    assert any('"POST /tasks HTTP/1.1" 201' in r["message"] for r in access)
    assert "POST /tasks HTTP" not in server_log
    lines = server_log.splitlines()  # uvicorn's first lines too, since the process logs JSON
    assert any("Started server process" in json.loads(line)["message"] for line in lines)
    assert all(json.loads(line)["level"] for line in lines)


def test_the_text_log_names_a_failures_exit_code_and_class(cluster, conn):
    """The shared cluster logs in text: the same facts as key=value pairs."""
    bad = run(conn, "story text", sh("exit 4"))
    expected = f"qcompute.transitions: task {bad.uuid} ended state=Failure"
    line = wait_for(lambda: next((line for line in (cluster.data_dir / "server.log")
                                  .read_text().splitlines() if expected in line), None),
                    timeout=10)
    assert "exit_code=4 failure=application" in line
    assert 'instances={"Failure": 1}' in line
