"""Commands as a Qarnot node runs them (${NAME} filled in, shlex, no shell), checked at submit;
and the live telemetry of running instances in task and pool documents."""
from __future__ import annotations

import pytest

from qcompute.server.command import CommandError, check_command, expand, split_command
from qcompute.server.executors.base import Telemetry

from .conftest import wait_for
from .test_pools import make_pool


@pytest.mark.parametrize("command, words", [
    ("echo hello world from node #${FRAME_ID}!", ["echo", "hello", "world", "from", "node",
                                                   "#7!"]),
    ("echo $FRAME_ID ${UNKNOWN} $$ ${}", ["echo", "$FRAME_ID", "${UNKNOWN}", "$$", "${}"]),
    ("sh -c 'echo $X; exit 3' > out", ["sh", "-c", "echo $X; exit 3", ">", "out"]),
    ('printf "%s\\n" "a  b" \'c "d"\' e\\ f', ["printf", "%s\\n", "a  b", 'c "d"', "e f"]),
    ("run ${ARG}", ["run", "two", "words"]),  # filled in, then split as a shell would
    ("run '${ARG}'", ["run", "two words"]),
    ("", []),
])
def test_filled_in_then_split(command, words):
    assert split_command(command, {"FRAME_ID": "7", "ARG": "two words"}) == words


def test_expand_keeps_unknown_names_and_fills_in_known_ones():
    assert expand("${A}-${B}-${a b}", {"A": "1"}) == "1-${B}-${a b}"


@pytest.mark.parametrize("command", ["echo 'unbalanced", 'echo "half', "echo trailing\\"])
def test_unsplittable_commands_are_refused(command):
    with pytest.raises(CommandError, match="cannot be split into words"):
        split_command(command, {})


def test_a_constant_can_make_a_command_unsplittable():
    with pytest.raises(CommandError):
        check_command("echo ${Q}", {"Q": "it's"})
    check_command("echo ${INSTANCE_ID} ${TASK_PATH}", {})  # the instance variables exist


def test_submit_refuses_a_command_that_does_not_split(cluster):
    doc = {"name": "t", "profile": "docker-batch",
           "constants": [{"key": "DOCKER_CMD", "value": "echo 'oops"}]}
    response = cluster.post("/tasks", json=doc)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_command"
    assert "DOCKER_CMD" in response.json()["message"]
    assert cluster.get("/tasks").json() == []


def test_pool_preparation_command_is_checked_too(roomy):
    response = roomy.post("/pools", json={"name": "p", "profile": "docker-batch",
                                          "instanceCount": 1,
                                          "preparationTask": {"commandLine": 'say "hi'}})
    assert response.status_code == 400 and response.json()["code"] == "invalid_command"
    assert "preparationTask.commandLine" in response.json()["message"]


def sample(key, cpu: float = 42.5, memory: float = 300.0) -> Telemetry:
    return Telemetry(key, cpu_usage=cpu, cpu_seconds=3.0, memory_mb=memory, max_memory_mb=512,
                     memory_limit_mb=1024, network_in_kbps=8.0, network_out_kbps=4.0,
                     frequency_ghz=2.5, max_frequency_ghz=3.0)


def test_running_instances_info_of_a_task(cluster):
    uuid = cluster.submit("true", instanceCount=2)
    first, second = cluster.wait_dispatched(uuid, 2)
    cluster.executor.start(first)
    cluster.executor.start(second)
    cluster.executor.on_event(sample(first))
    info = wait_for(lambda: (doc := cluster.task(uuid))["state"] == "FullyExecuting"
                    and doc["status"]["runningInstancesInfo"])
    entries = {e["instanceId"]: e for e in info["perRunningInstanceInfo"]}
    assert set(entries) == {0, 1}
    busy, idle = entries[0], entries[1]
    assert busy["phase"] == "execution" and busy["cpuUsage"] == 42.5
    assert (busy["currentMemoryMB"], busy["maxMemoryMB"], busy["memoryUsage"]) == (300, 512,
                                                                                   0.293)
    assert (busy["networkInKbps"], busy["networkOutKbps"]) == (8.0, 4.0)
    assert (busy["currentFrequencyGHz"], busy["maxFrequencyGHz"]) == (2.5, 3.0)
    assert busy["executionTimeGHz"] == 7.5 and busy["executionAttemptCount"] == 1
    assert idle["cpuUsage"] == 0.0 and idle["currentMemoryMB"] == 0  # no sample yet
    assert info["averageCpuUsage"] == 21.25 and info["totalNetworkInKbps"] == 8.0
    cluster.executor.run(first)
    cluster.executor.run(second)
    done = wait_for(lambda: (doc := cluster.task(uuid))["state"] == "Success" and doc)
    assert done["status"]["runningInstancesInfo"]["perRunningInstanceInfo"] == []
    assert cluster.client.app.state.ctx.scheduler.telemetry.get(first) is None  # forgotten


def test_running_instances_info_of_a_pool_slot(roomy):
    pool = make_pool(roomy, instanceCount=2)
    wait_for(lambda: roomy.get(f"/pools/{pool}").json()["state"] == "FullyExecuting")
    task = roomy.submit("true", poolUuid=pool)
    [key] = roomy.wait_dispatched(task, 1)
    roomy.executor.start(key)
    roomy.executor.on_event(sample(key, cpu=60.0))
    entries = wait_for(lambda: [e for e in roomy.get(f"/pools/{pool}").json()["status"]
                                ["runningInstancesInfo"]["perRunningInstanceInfo"]
                                if e["cpuUsage"] and e["phase"] == "execution"])
    info = roomy.get(f"/pools/{pool}").json()["status"]["runningInstancesInfo"]
    assert len(info["perRunningInstanceInfo"]) == 2  # one entry per slot held
    assert entries[0]["cpuUsage"] == 60.0 and entries[0]["phase"] == "execution"
    assert entries[0]["currentMemoryMB"] == 300
