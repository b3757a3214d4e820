"""qcompute across two real hosts (``conftest.py``): the API, S3 and a Ray head on host 1, a Ray
node joined with ``qcompute node join`` on host 2, each in its own network namespace, reaching
each other only through their addresses on the bridge. Instances run sandboxed, with the
instance network on: those on host 2 reach host 1's API and S3 through pasta.

The link cut comes last in the file, and its test joins host 2 again when done.
"""
from __future__ import annotations

import pytest

from .conftest import H1_SLOTS, H2_SLOTS, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ZONE_H2 = {"discriminator": "SpecificHardwareConstraint", "specificationKey": "zone=h2"}


def _nodes_in_stdout(deployment, uuid: str) -> list[str]:
    """The Ray node ids the instances printed from their QCOMPUTE_NODE."""
    stdout = deployment.call("GET", f"/tasks/{uuid}/stdout").text
    return [line.split("/")[-1] for line in stdout.splitlines() if line.startswith("node=")]


def test_both_hosts_are_nodes(deployment):
    by_address = {n["address"]: n for n in deployment.nodes()}
    assert set(by_address) == {deployment.h1.address, deployment.h2.address}
    assert by_address[deployment.h1.address]["slots"] == H1_SLOTS
    assert by_address[deployment.h2.address]["slots"] == H2_SLOTS
    assert by_address[deployment.h2.address]["labels"] == {"zone": "h2"}
    print(f"two hosts up in {deployment.started_in:.1f} s")


def test_instances_land_on_both_hosts(deployment):
    h1, h2 = deployment.node_of(deployment.h1), deployment.node_of(deployment.h2)
    # one instance per slot, each long enough that all run at once: Ray must use both nodes
    uuid = deployment.submit("sh -c 'echo node=$QCOMPUTE_NODE; sleep 3'",
                             instanceCount=H1_SLOTS + H2_SLOTS)
    task = deployment.wait_state(uuid, "Success")
    recorded = [done["node"]["id"] for done in task["completedInstances"]]
    assert sorted(recorded) == sorted([h1] * H1_SLOTS + [h2] * H2_SLOTS)
    assert sorted(_nodes_in_stdout(deployment, uuid)) == sorted(recorded)
