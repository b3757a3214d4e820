"""Hardware constraints: one class per discriminator, unknown kinds kept, listing and search."""
from __future__ import annotations

from typing import Any

import pytest
import responses

from qcompute import (
    APIError,
    Connection,
    CpuModelHardware,
    GpuHardware,
    HardwareConstraint,
    MaximumCoreHardware,
    MaximumRamCoreRatioHardware,
    MaximumRamHardware,
    MinimumCoreHardware,
    MinimumRamCoreRatioHardware,
    MinimumRamHardware,
    NoGpuHardware,
    NoSSDHardware,
    SpecificHardware,
    SSDHardware,
    UnknownHardwareConstraint,
)

from .helpers import API, TASK_UUID, body, task_doc

HW = f"{API}/hardware-constraints"

DOCS = [
    ({"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 8}, MinimumCoreHardware(8)),
    ({"discriminator": "MaximumCoreHardwareConstraint", "coreCount": 32},
     MaximumCoreHardware(32)),
    ({"discriminator": "MinimumRamCoreRatioHardwareConstraint", "minimumMemoryGBCoreRatio": 2.0},
     MinimumRamCoreRatioHardware(2.0)),
    ({"discriminator": "MaximumRamCoreRatioHardwareConstraint", "maximumMemoryGBCoreRatio": 8},
     MaximumRamCoreRatioHardware(8)),
    ({"discriminator": "MinimumRamHardwareConstraint", "minimumMemoryMB": 4096},
     MinimumRamHardware(4096)),
    ({"discriminator": "MaximumRamHardwareConstraint", "maximumMemoryMB": 65536},
     MaximumRamHardware(65536)),
    ({"discriminator": "SpecificHardwareConstraint",
      "specificationKey": "28c-128g-intel-dual-xeon2680v4-ssd"},
     SpecificHardware("28c-128g-intel-dual-xeon2680v4-ssd")),
    ({"discriminator": "GpuHardwareConstraint"}, GpuHardware()),
    ({"discriminator": "NoGpuHardwareConstraint"}, NoGpuHardware()),
    ({"discriminator": "SSDHardwareConstraint"}, SSDHardware()),
    ({"discriminator": "NoSSDHardwareConstraint"}, NoSSDHardware()),
    ({"discriminator": "CpuModelHardwareConstraint", "cpuModel": "AMD EPYC 7742"},
     CpuModelHardware("AMD EPYC 7742")),
]


@pytest.mark.parametrize("doc, constraint", DOCS)
def test_each_discriminator_round_trips(doc: dict[str, Any],
                                        constraint: HardwareConstraint) -> None:
    assert HardwareConstraint.from_json(doc) == constraint
    assert constraint.to_json() == doc


def test_unknown_discriminator_keeps_the_raw_document() -> None:
    doc = {"discriminator": "QuantumHardwareConstraint", "qubits": 7}
    parsed = HardwareConstraint.from_json(doc)
    assert isinstance(parsed, UnknownHardwareConstraint)
    assert parsed.kind == "QuantumHardwareConstraint" and parsed.raw == doc
    assert parsed.to_json() == doc


def test_all_hardware_constraints_pages_by_offset(api: responses.RequestsMock,
                                                  conn: Connection) -> None:
    api.add("GET", HW, json={"data": [d for d, _ in DOCS[:2]], "offset": 0, "limit": 2,
                             "total": 3})
    api.add("GET", HW, json={"data": [DOCS[2][0]], "offset": 2, "limit": 2, "total": 3})
    assert list(conn.all_hardware_constraints()) == [c for _, c in DOCS[:3]]
    assert [c.request.url for c in api.calls] == [f"{HW}?limit=50&offset=0",
                                                  f"{HW}?limit=50&offset=2"]


def test_a_server_answering_limit_zero_cannot_loop_for_ever(api: responses.RequestsMock,
                                                            conn: Connection) -> None:
    api.add("GET", HW, json={"data": [], "offset": 0, "limit": 0, "total": 5})
    assert list(conn.all_hardware_constraints()) == []
    assert len(api.calls) == 1
    api.add("GET", HW, json={"error": "nope"})
    with pytest.raises(APIError, match="without a 'data' list"):
        list(conn.all_hardware_constraints())


def test_search_cpu_model_is_url_encoded(api: responses.RequestsMock, conn: Connection) -> None:
    url = f"{HW}/cpu-model-constraints/search"
    api.add("GET", url, json=[DOCS[-1][0]])
    assert conn.search_cpu_model_constraints("AMD EPYC+ 7742&x") == [DOCS[-1][1]]
    assert api.calls[0].request.url == f"{url}?cpuModel=AMD+EPYC%2B+7742%26x"


def test_task_sends_and_reads_its_constraints(api: responses.RequestsMock,
                                              conn: Connection) -> None:
    task = conn.create_task("t", "docker-batch")
    task.hardware_constraints = [MinimumCoreHardware(4), NoGpuHardware()]
    task.hardware_constraints.append(SSDHardware())
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": TASK_UUID})
    api.add("GET", f"{API}/tasks/{TASK_UUID}", json=task_doc(hardwareConstraints=[
        DOCS[0][0], {"discriminator": "Other"}]))
    task.submit()
    assert body(api.calls[0])["hardwareConstraints"] == [
        {"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 4},
        {"discriminator": "NoGpuHardwareConstraint"}, {"discriminator": "SSDHardwareConstraint"}]
    assert task.hardware_constraints == [MinimumCoreHardware(8),
                                         UnknownHardwareConstraint({"discriminator": "Other"})]
