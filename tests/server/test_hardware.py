"""Node capabilities, hardware constraints, and the /hardware-constraints routes."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from qcompute.server.db.models import Task
from qcompute.server.errors import BadRequest
from qcompute.server.hardware import NodeCapabilities, NodeOverrides, detect, slugify_cpu_model
from qcompute.server.services.hardware import (check_constraints, offered_constraints,
                                               search_cpu_models)

from .conftest import Cluster, serving

EPYC = NodeCapabilities(cores=2, memory_mb=24 * 1024, cpu_model="AMD EPYC 7B13", clock_ghz=2.45)
XEON = NodeCapabilities(cores=28, memory_mb=128 * 1024, ssd=True, labels=["big"],
                        cpu_model="Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz")
GPU = NodeCapabilities(cores=8, memory_mb=32 * 1024, gpu=True, cpu_model="AMD EPYC 7763")
NODES = [EPYC, XEON]


def c(kind: str, **fields) -> dict:
    return {"discriminator": kind, **fields}


def test_spec_keys():
    assert EPYC.spec_key == "2c-24g-amd-epyc-7b13"
    assert XEON.spec_key == "28c-128g-intel-xeon-e5-2680-v4-ssd"
    assert GPU.spec_key == "8c-32g-amd-epyc-7763-gpu"
    assert slugify_cpu_model("AMD Ryzen 9 5950X 16-Core Processor") == "amd-ryzen-9-5950x"
    assert slugify_cpu_model("(R)") == "unknown"


def test_detect_keeps_overrides_and_probes_the_rest(tmp_path):
    node = detect(tmp_path, NodeOverrides(cores=3, memory_mb=2048, cpu_model="Test CPU",
                                          gpu=True, ssd=False, labels=["a"]))
    assert (node.cores, node.memory_mb, node.cpu_model, node.gpu, node.ssd, node.labels) == (
        3, 2048, "Test CPU", True, False, ["a"])
    probed = detect(tmp_path / "not" / "yet")
    assert probed.cores >= 1 and probed.memory_mb > 1 and probed.cpu_model


@pytest.mark.parametrize("constraints", [
    None, [],
    [c("MinimumCoreHardwareConstraint", coreCount=28)],
    [c("MaximumCoreHardwareConstraint", coreCount=2)],
    [c("MinimumRamCoreRatioHardwareConstraint", minimumMemoryGBCoreRatio=12)],
    [c("MaximumRamCoreRatioHardwareConstraint", maximumMemoryGBCoreRatio=4.58)],
    [c("MinimumRamHardwareConstraint", minimumMemoryMB=131072)],
    [c("MaximumRamHardwareConstraint", maximumMemoryMB=24576.0)],
    [c("SpecificHardwareConstraint", specificationKey="2C-24G-amd-epyc-7b13")],
    [c("SpecificHardwareConstraint", specificationKey="BIG")],
    [c("CpuModelHardwareConstraint", cpuModel="xeon")],
    [c("NoGpuHardwareConstraint")], [c("SSDHardwareConstraint")], [c("NoSSDHardwareConstraint")],
    [c("SSDHardwareConstraint"), c("MinimumCoreHardwareConstraint", coreCount=16),
     c("CpuModelHardwareConstraint", cpuModel="E5-2680")],
])
def test_satisfiable_constraints_pass(constraints):
    check_constraints(NODES, constraints)


@pytest.mark.parametrize("constraints, named", [
    ([c("MinimumCoreHardwareConstraint", coreCount=29)], "MinimumCoreHardwareConstraint"),
    ([c("MaximumCoreHardwareConstraint", coreCount=1)], "coreCount=1"),
    ([c("MinimumRamCoreRatioHardwareConstraint", minimumMemoryGBCoreRatio=13)], "Ratio"),
    ([c("MaximumRamCoreRatioHardwareConstraint", maximumMemoryGBCoreRatio=4)], "Ratio"),
    ([c("MinimumRamHardwareConstraint", minimumMemoryMB=200_000)], "minimumMemoryMB=200000"),
    ([c("MaximumRamHardwareConstraint", maximumMemoryMB=1000)], "MaximumRam"),
    ([c("SpecificHardwareConstraint", specificationKey="nope")], "'nope'"),
    ([c("CpuModelHardwareConstraint", cpuModel="ARM")], "cpuModel='ARM'"),
    ([c("GpuHardwareConstraint")], "GpuHardwareConstraint"),
    # each is met by some node, never all by one node
    ([c("SSDHardwareConstraint"), c("MaximumCoreHardwareConstraint", coreCount=4)], "together"),
])
def test_unsatisfiable_constraints_name_the_constraint_and_the_offer(constraints, named):
    with pytest.raises(BadRequest) as err:
        check_constraints(NODES, constraints)
    assert err.value.code == "unsatisfiable_hardware_constraint"
    assert "hardware constraint" in err.value.message and named in err.value.message
    assert EPYC.spec_key in err.value.message and XEON.spec_key in err.value.message


@pytest.mark.parametrize("constraint, named", [
    (c("QuantumHardwareConstraint"), "QuantumHardwareConstraint"),
    ({"coreCount": 2}, "discriminator"),
    ("GpuHardwareConstraint", "discriminator"),
    (c("MinimumCoreHardwareConstraint"), "coreCount"),
    (c("MinimumCoreHardwareConstraint", coreCount="4"), "coreCount"),
    (c("MinimumCoreHardwareConstraint", coreCount=True), "coreCount"),
    (c("MaximumCoreHardwareConstraint", coreCount=0), "coreCount"),
    (c("MinimumRamHardwareConstraint", minimumMemoryMB=-1), "minimumMemoryMB"),
    (c("MinimumRamCoreRatioHardwareConstraint", minimumMemoryGBCoreRatio="x"), "Ratio"),
    (c("SpecificHardwareConstraint", specificationKey=""), "specificationKey"),
    (c("CpuModelHardwareConstraint", cpuModel=3), "cpuModel"),
])
def test_malformed_constraints_are_400(constraint, named):
    with pytest.raises(BadRequest) as err:
        check_constraints(NODES, [constraint])
    assert err.value.code == "invalid_hardware_constraint" and named in err.value.message


def test_any_node_kind_may_satisfy():
    check_constraints([EPYC, GPU], [c("GpuHardwareConstraint"), c("CpuModelHardwareConstraint",
                                                                 cpuModel="epyc 7763")])
    with pytest.raises(BadRequest):
        check_constraints([EPYC], [c("GpuHardwareConstraint")])


def test_every_offered_constraint_is_satisfiable():
    offered = offered_constraints(NODES + [GPU, EPYC])
    assert len(offered) == len({repr(sorted(o.items())) for o in offered})  # no duplicates
    for constraint in offered:
        check_constraints(NODES + [GPU], [constraint])
    assert c("SpecificHardwareConstraint", specificationKey="big") in offered
    assert c("GpuHardwareConstraint") in offered and c("NoGpuHardwareConstraint") in offered


def test_cpu_model_search_ranks_exact_then_prefix_then_substring():
    nodes = [NodeCapabilities(cores=1, memory_mb=1024, cpu_model=m)
             for m in ("Super AMD EPYC", "AMD EPYC 7763", "amd epyc", "Intel Xeon")]
    found = [x["cpuModel"] for x in search_cpu_models(nodes, "AMD EPYC")]
    assert found == ["amd epyc", "AMD EPYC 7763", "Super AMD EPYC"]
    assert search_cpu_models(nodes, "arm") == []
    assert search_cpu_models(nodes, "xeon") == [c("CpuModelHardwareConstraint",
                                                  cpuModel="Intel Xeon")]


@pytest.fixture
def hw_cluster(tmp_path, database_url):
    with serving(tmp_path, nodes=NODES) as running:
        yield running


def test_constraints_route_pages_with_offset_and_limit(hw_cluster):
    everything = offered_constraints(NODES)
    seen, offset = [], 0
    while True:
        page = hw_cluster.get(f"/hardware-constraints?limit=3&offset={offset}").json()
        assert page["limit"] == 3 and page["offset"] == offset
        assert page["total"] == len(everything)
        seen += page["data"]
        offset += page["limit"]
        if offset >= page["total"]:
            break
    assert seen == everything
    default = hw_cluster.get("/hardware-constraints").json()
    assert default["limit"] == 50 and default["data"] == everything
    for bad in ("limit=0", "limit=1001", "offset=-1", "limit=x", f"offset={2**64}"):
        reply = hw_cluster.get(f"/hardware-constraints?{bad}")
        assert reply.status_code == 400, bad
    assert hw_cluster.client.get("/hardware-constraints").status_code == 401


def test_cpu_model_search_route(hw_cluster):
    path = "/hardware-constraints/cpu-model-constraints/search"
    assert hw_cluster.get(path, params={"cpuModel": "amd"}).json() == [
        c("CpuModelHardwareConstraint", cpuModel="AMD EPYC 7B13")]
    assert hw_cluster.get(path, params={"cpuModel": "power9"}).json() == []


def test_routes_on_the_detected_host(cluster):
    node = cluster.client.get("/health").json()["nodes"][0]
    page = cluster.get("/hardware-constraints").json()
    key = node["specificationKey"]
    assert c("SpecificHardwareConstraint", specificationKey=key) in page["data"]
    assert 0 < page["limit"] and page["total"] == len(page["data"])
    found = cluster.get("/hardware-constraints/cpu-model-constraints/search",
                        params={"cpuModel": node["cpuModel"]}).json()
    assert found[0] == c("CpuModelHardwareConstraint", cpuModel=node["cpuModel"])


def _task_count(cluster: Cluster) -> int:
    with cluster.client.app.state.ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(Task))


def test_submit_checks_hardware_constraints(hw_cluster):
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    impossible = [c("NoSSDHardwareConstraint"), c("MinimumCoreHardwareConstraint", coreCount=64)]
    reply = hw_cluster.post("/tasks", json={**doc, "hardwareConstraints": impossible})
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == "unsatisfiable_hardware_constraint"
    assert "hardware constraint MinimumCoreHardwareConstraint(coreCount=64)" in body["message"]
    assert _task_count(hw_cluster) == 0
    bad = hw_cluster.post("/tasks", json={**doc, "hardwareConstraints": [c("Nope")]})
    assert bad.status_code == 400 and "'Nope'" in bad.json()["message"]
    assert _task_count(hw_cluster) == 0
    possible = [c("SSDHardwareConstraint"), c("CpuModelHardwareConstraint", cpuModel="xeon")]
    uuid = hw_cluster.submit("true", hardwareConstraints=possible)
    assert hw_cluster.task(uuid)["hardwareConstraints"] == possible
