"""qcompute across two real hosts (``conftest.py``): the API, S3 and a Ray head on host 1, a Ray
node joined with ``qcompute node join`` on host 2, each in its own network namespace, reaching
each other only through their addresses on the bridge. The S3 is the server's embedded one:
its S3 port is relayed on host 1's address, SeaweedFS's other ports stay on loopback. Instances
run sandboxed, with the instance network on: those on host 2 reach host 1's API and S3 through
pasta.

The faults that lose host 2 come last in the file; each test joins host 2 again when done.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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


REACH = """
import os, time, urllib.request, urllib.error
print("node=" + os.environ["QCOMPUTE_NODE"])
print("api", urllib.request.urlopen(os.environ["QCOMPUTE_CLUSTER_URL"] + "/health").status)
try:
    urllib.request.urlopen(os.environ["QCOMPUTE_STORAGE_URL"], timeout=10)
except urllib.error.HTTPError as exc:  # anonymous: refused, but by the store
    print("s3", exc.code)
time.sleep(3)
"""


def test_instances_land_on_both_hosts(deployment):
    """Instances run on both hosts, and on either one reach the API and S3 at the URLs their
    environment names (host 1's address: from host 1's sandboxes too)."""
    h1, h2 = deployment.node_of(deployment.h1), deployment.node_of(deployment.h2)
    # one instance per slot, each long enough that all run at once: Ray must use both nodes
    uuid = deployment.submit(f"{sys.executable} -c '{REACH}'", instanceCount=H1_SLOTS + H2_SLOTS,
                             privileges={"exportApiAndStorageCredentialsInEnvironment": True})
    task = deployment.wait_state(uuid, "Success")
    recorded = [done["node"]["id"] for done in task["completedInstances"]]
    assert sorted(recorded) == sorted([h1] * H1_SLOTS + [h2] * H2_SLOTS)
    assert sorted(_nodes_in_stdout(deployment, uuid)) == sorted(recorded)
    stdout = deployment.call("GET", f"/tasks/{uuid}/stdout").text
    assert stdout.count("api 200") == stdout.count("s3 403") == H1_SLOTS + H2_SLOTS


LISTENING = """
import json, sys, psutil
print(json.dumps([[c.laddr.ip, c.laddr.port, c.pid] for c in psutil.net_connections("inet")
                  if c.status == psutil.CONN_LISTEN]))
"""


def test_embedded_s3_alone_listens_beyond_loopback(deployment):
    """On host 1, the embedded S3 port and the official SDK's S3 front listen on the host's
    address (the server's relay and front), and are handed out there; every socket of SeaweedFS
    (master, volume, filer, admin, its own S3) listens on 127.0.0.1 only."""
    with deployment.h1.entered():  # a process started meanwhile sees host 1's sockets
        done = subprocess.run([sys.executable, "-c", LISTENING], capture_output=True, text=True,
                              timeout=60, check=True)
    listening = {(ip, port): pid for ip, port, pid in json.loads(done.stdout)}
    weed, server = deployment.weed_pid(), deployment.server.process.pid
    assert listening.get((deployment.h1.address, deployment.server.s3_port)) == server
    front_port = int((deployment.server.data_dir / "s3-front.port").read_text())
    assert listening.get((deployment.h1.address, front_port)) == server
    weed_sockets = {address for address, pid in listening.items() if pid == weed}
    ports = json.loads((deployment.server.data_dir / "s3" / "ports.json").read_text())
    assert {ports[name] for name in ("master", "volume", "filer")} <= {
        port for _, port in weed_sockets}
    assert {ip for ip, _ in weed_sockets} == {"127.0.0.1"}
    assert deployment.call("GET", "/settings").json()["storage"] == deployment.s3_url
    official = deployment.call("GET", "/settings", headers={"User-Agent": "qarnot-sdk-python/2"})
    assert official.json()["storage"] == f"http://{deployment.h1.address}:{front_port}"


PROBE = """
import os, urllib.request, urllib.error
print("node=" + os.environ["QCOMPUTE_NODE"])
print("api", urllib.request.urlopen(os.environ["API"] + "/health", timeout=10).status)
try:
    urllib.request.urlopen(os.environ["S3"], timeout=10)
except urllib.error.HTTPError as exc:  # anonymous: refused, but by the store
    print("s3", exc.code)
os.makedirs("out", exist_ok=True)
open("out/read.txt", "w").write(open("in.txt").read())
"""


def test_a_label_constraint_selects_host_2(deployment, tmp_path):
    """Instances asking for zone=h2 run there, download their resources from host 1's embedded
    S3, upload their results to it, and reach host 1's API and S3 from their sandbox."""
    h2 = deployment.node_of(deployment.h2)
    (tmp_path / "in.txt").write_text("from host 1's store")
    with deployment.h1.entered():  # the SDK's sockets are opened on host 1
        conn = deployment.server.connection()
        resources = conn.create_bucket("netns-in")
        resources.add_file(str(tmp_path / "in.txt"), "in.txt")
        results = conn.create_bucket("netns-out")
    uuid = deployment.submit(
        f"{sys.executable} -c '{PROBE}'", instanceCount=2, hardwareConstraints=[ZONE_H2],
        constants={"API": deployment.server.url, "S3": deployment.s3_url},
        resourceBuckets=["netns-in"], resultBucket="netns-out")
    task = deployment.wait_state(uuid, "Success")
    assert [done["node"]["id"] for done in task["completedInstances"]] == [h2, h2]
    stdout = deployment.call("GET", f"/tasks/{uuid}/stdout").text
    assert _nodes_in_stdout(deployment, uuid) == [h2, h2]
    assert stdout.count("api 200") == 2 and stdout.count("s3 403") == 2
    with deployment.h1.entered():
        got = tmp_path / "read.txt"
        results.get_file("out/read.txt", str(got))
    assert got.read_text() == "from host 1's store"


def _raylet_of(host) -> int:
    """The pid of the host's raylet (its Ray node's agent), found among the host's processes."""
    for pid in host.pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"/raylet"):
            return pid
    raise AssertionError(f"no raylet among {host.name}'s processes")


@pytest.mark.parametrize("fault", ["raylet killed", "link cut"])
def test_host_2_lost_mid_run_requeues_its_instances_on_host_1(deployment, fault):
    """Host 2's raylet SIGKILLed, or its cable unplugged, mid-run: Ray declares its node dead,
    its instances end with an infrastructure failure (recorded) and run again on host 1; the
    task succeeds. Host 2 joins again afterwards (a new Ray node: the dead one cannot come
    back)."""
    h1, h2 = deployment.node_of(deployment.h1), deployment.node_of(deployment.h2)
    uuid = deployment.submit("sh -c 'echo node=$QCOMPUTE_NODE; sleep 8'",
                             instanceCount=H1_SLOTS + H2_SLOTS)
    on_h2 = wait_for(lambda: (found := [i.instance_id for i in deployment.instances(uuid)
                                        if i.state == "Running" and (i.node or {}).get("id") == h2])
                     and len(found) == H2_SLOTS and found, 60, "instances running on host 2")
    if fault == "link cut":
        deployment.h2.set_link(False)
    else:
        os.kill(_raylet_of(deployment.h2), signal.SIGKILL)
    try:
        failed = wait_for(lambda: (found := [i for i in deployment.instances(uuid)
                                             if i.infra_failures])
                          and len(found) == H2_SLOTS and found, 90, "host 2's instances failed")
        assert sorted(i.instance_id for i in failed) == sorted(on_h2)
        for instance in failed:
            assert instance.error and h2 in instance.error and "Ray" in instance.error
        task = deployment.wait_state(uuid, "Success")
        by_id = {i.instance_id: i for i in deployment.instances(uuid)}
        for instance_id, instance in by_id.items():
            if instance_id in on_h2:
                assert (instance.attempt, instance.infra_failures) == (2, 1)
            else:
                assert (instance.attempt, instance.infra_failures) == (1, 0)
            assert instance.node["id"] == h1 and instance.state == "Success"
        assert {done["node"]["id"] for done in task["completedInstances"]} == {h1}
        assert h2 not in {node["id"] for node in deployment.nodes()}
    finally:
        deployment.join_h2()
    assert deployment.node_of(deployment.h2) not in (None, h2)
