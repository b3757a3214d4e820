"""The instance runtime on the real cluster: commands run as on a Qarnot node, in a sandbox, with
live telemetry."""
from __future__ import annotations

import time

import pytest

import qcompute
from qcompute import PoolState, TaskState


def run(conn, command: str, **fields) -> qcompute.Task:
    task = conn.create_task("runtime", "docker-batch", fields.pop("instances", 1))
    task.constants["DOCKER_CMD"] = command
    for name, value in fields.items():
        setattr(task, name, value)
    task.run(job_timeout=60)
    return task


def test_the_official_readme_sample_prints_its_frame(conn):
    task = run(conn, "echo hello world from node #${FRAME_ID}!", instances=2)
    assert task.state == TaskState.SUCCESS
    assert sorted(task.stdout().splitlines()) == ["hello world from node #0!",
                                                  "hello world from node #1!"]


def test_quoting_and_sh_c_behave_as_on_a_qarnot_node(conn):
    task = run(conn, "echo 'a  b' \"c d\" $HOME ${INSTANCE_ID} ${NOT_A_CONSTANT} '#x' > f")
    assert task.stdout() == "a  b c d $HOME 0 ${NOT_A_CONSTANT} #x > f\n"
    task = run(conn, "sh -c 'echo $((6 * 7)) | cat; echo $TASK_PATH; pwd'")
    assert task.stdout() == "42\n/job\n/job\n"


def test_a_command_that_does_not_split_is_refused_at_submit(conn):
    task = conn.create_task("unbalanced", "docker-batch")
    task.constants["DOCKER_CMD"] = "echo 'unbalanced"
    with pytest.raises(qcompute.exceptions.BadRequestError, match="cannot be split into words"):
        task.submit()


def test_a_resource_script_runs_from_the_job_directory(conn):
    bucket = conn.create_bucket("e2e-runtime-scripts")
    bucket.add_string("#!/bin/sh\necho run.sh in $(pwd) with $1\n", "run.sh")
    bucket.add_string("#!/bin/sh\necho nested\n", "bin/tool")
    task = run(conn, "./run.sh arg", resources=[bucket])
    assert task.state == TaskState.SUCCESS, task.errors
    assert task.stdout() == "run.sh in /job with arg\n"
    assert run(conn, "/job/bin/tool", resources=[bucket]).stdout() == "nested\n"


def test_a_missing_program_fails_with_127(conn):
    task = run(conn, "no-such-program --flag")
    assert task.state == TaskState.FAILURE
    assert task.completed_instances[0].exit_code == 127


def _busy(seconds: int) -> str:
    return ("python3 -c 'import time\nx = bytearray(64 * 2**20)\nt = time.time()\n"
            f"while time.time() - t < {seconds}: pass'")


def _wait_for_telemetry(resource, timeout: float = 20):
    """The first running instance whose telemetry shows CPU and memory in use."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resource.update(True)
        busy = [r for r in resource.running_instances
                if (r.cpu_usage or 0) > 0 and (r.current_memory_mb or 0) > 0]
        if busy:
            return busy[0]
        time.sleep(0.5)
    raise AssertionError(f"no telemetry: {resource.running_instances}")


def test_running_instances_of_a_busy_task(conn):
    task = conn.create_task("busy", "docker-batch")
    task.constants["DOCKER_CMD"] = _busy(6)
    task.submit()
    info = _wait_for_telemetry(task)
    assert info.phase == "execution" and info.instance_id == 0
    assert info.current_memory_mb >= 64 and 0 < info.memory_usage < 1
    assert info.max_memory_mb >= info.current_memory_mb and info.execution_time_sec > 0
    assert info.execution_attempt_count == 1 and info.cpu_model
    raw = task.status.running_instances_info
    assert raw["averageCpuUsage"] > 0 and raw["perRunningInstanceInfo"][0]["cpuUsage"] > 0
    task.abort()
    assert task.wait(timeout=30)


def test_running_instances_of_a_busy_pool_slot(conn):
    pool = conn.create_pool("busy-pool", "docker-batch", 1)
    pool.submit()
    try:
        assert pool.wait(PoolState.FULLY_EXECUTING, timeout=60)
        task = conn.create_task("busy-in-pool", pool)
        task.constants["DOCKER_CMD"] = _busy(6)
        task.submit()
        info = _wait_for_telemetry(pool)
        assert info.phase == "execution" and info.instance_id == 0
        assert info.current_memory_mb >= 64
        task.abort()
        assert task.wait(timeout=30)
    finally:
        pool.close()
        pool.wait(PoolState.CLOSED, timeout=30)
