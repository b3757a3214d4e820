"""Hardware constraints through the official SDK: what the cluster offers (offset pages, CPU-model
search), a satisfiable constraint that runs, and impossible ones refused at submit (tasks and
pools) with a message naming the constraint.

The server answers an unsatisfiable set with 400 (``unsatisfiable_hardware_constraint``); the SDK
turns it into ``QarnotGenericException``, as it does a 402 "hardware constraint" on a task. (A
402 on a *pool* would become ``NotEnoughCreditsException``, so 400 is the better answer.)"""
from __future__ import annotations

import pytest
from qarnot.exceptions import QarnotGenericException
from qarnot.hardware_constraint import (CpuModelHardware, GpuHardware, MinimumCoreHardware,
                                        MinimumRamHardware)

from .helpers import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:(flush|update) is deprecated as of 2.6.0")


def test_offered_constraints_and_cpu_model_search(qconn):
    offered = list(qconn.all_hardware_constraints())  # walks GET /hardware-constraints pages
    assert offered and None not in offered  # None: a discriminator the SDK does not know
    kinds = {type(c) for c in offered}
    assert {MinimumCoreHardware, MinimumRamHardware, CpuModelHardware} <= kinds
    page = qconn.hardware_constraints_page(limit=1, offset=0)
    assert (len(page.page_data), page.limit, page.offset, page.total) == (1, 1, 0, len(offered))

    model = next(c for c in offered if isinstance(c, CpuModelHardware))._cpu_model
    found = qconn.search_cpu_model_constraints(model.split()[0].lower())
    assert found and all(isinstance(c, CpuModelHardware) for c in found)
    assert model in [c._cpu_model for c in found]
    assert qconn.search_cpu_model_constraints("no-such-cpu-model") == []


def test_satisfiable_constraint_runs_impossible_one_is_refused(qconn):
    task = qconn.create_task("compat-hw-ok", "docker-batch", 1)
    task.constants["DOCKER_CMD"] = "echo fits"
    task.hardware_constraints = [MinimumCoreHardware(1)]
    task.submit()
    assert wait_for(task) == "Success", task.errors
    assert [c.to_json() for c in qconn.retrieve_task(task.uuid).hardware_constraints] == [
        {"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 1}]
    task.delete()

    impossible = qconn.create_task("compat-hw-impossible", "docker-batch", 1)
    impossible.constants["DOCKER_CMD"] = "echo never"
    impossible.hardware_constraints = [MinimumCoreHardware(10000)]
    with pytest.raises(QarnotGenericException,
                       match="hardware constraint MinimumCoreHardwareConstraint"):
        impossible.submit()
    assert impossible.uuid is None

    pool = qconn.create_pool("compat-hw-pool", "docker-batch", 1)
    pool.hardware_constraints = [GpuHardware(), MinimumCoreHardware(10000)]
    with pytest.raises(QarnotGenericException, match="hardware constraint"):
        pool.submit()
    assert pool.uuid is None
