"""The metrics' pieces that need no real cluster: the failure classes, and the Grafana
dashboard of the docs asking only for what ``/metrics`` exposes (tests/e2e/test_observability.py
runs the rest on a real cluster)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qcompute.server.services.lifecycle import FAILURE_CLASSES, failure_class
from qcompute.states import InstanceState as I

DASHBOARD = Path(__file__).parents[2] / "docs" / "_static" / "grafana-qcompute.json"


@pytest.mark.parametrize("state, exit_code, expected", [
    (I.SUCCEEDED, 0, None),
    (I.CANCELLED, None, "cancelled"),
    (I.CANCELLED, 143, "cancelled"),
    (I.FAILED, None, "infrastructure"),   # never ran, or its runner was lost
    (I.QUEUED, None, "infrastructure"),   # ... and run again
    (I.QUEUED, 0, "infrastructure"),      # the node failed after the command
    (I.FAILED, 3, "application"),
    (I.QUEUED, 3, "application"),         # retried (retrySettings)
    (I.FAILED, 0, "results"),             # exited 0, its results could not be stored
])
def test_failure_classes(state, exit_code, expected):
    assert failure_class(state, exit_code) == expected
    assert expected is None or expected in FAILURE_CLASSES


def test_the_dashboard_asks_only_for_exposed_metrics(cluster):
    uuid = cluster.submit()
    cluster.executor.run(cluster.wait_dispatched(uuid, 1)[0], exit_code=2)
    cluster.wait_state(uuid, "Failure")
    reply = cluster.get("/metrics")
    assert reply.status_code == 200
    exposed = {sample.name for family in text_string_to_metric_families(reply.text)
               for sample in family.samples}
    queries = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
               for target in panel["targets"]]
    asked = {name for query in queries for name in re.findall(r"qcompute_[a-z_]+", query)}
    assert len(asked) >= 8
    assert asked <= exposed, asked - exposed
