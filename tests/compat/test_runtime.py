"""Published official-SDK scripts about how a task runs: the SDK's own README sample, and a
script printing the live progress of a running task from ``running_instances_info``."""
from __future__ import annotations

import time

from .helpers import wait_for


def test_the_sdks_readme_sample(qconn):
    """The README of the ``qarnot`` package, unchanged but for the connection: ``#`` is no shell
    comment and ``${FRAME_ID}`` is filled in, as on a Qarnot node."""
    task = qconn.create_task('hello world', 'docker-batch', 4)
    task.constants['DOCKER_CMD'] = 'echo hello world from node #${FRAME_ID}!'
    task.run()
    assert task.state == "Success"
    assert sorted(task.stdout().splitlines()) == [f"hello world from node #{i}!"
                                                  for i in range(4)]
    task.delete()


BUSY = ("python3 -c 'import time\nx = bytearray(64 * 2**20)\nt = time.time()\n"
        "while time.time() - t < 8: pass'")


def _progress_lines(task) -> list[str]:
    """What a monitoring script prints: every field is a number it can format."""
    info = task.status.running_instances_info
    lines = [f"avg cpu {info.average_cpu_usage:.1f}% avg mem {info.average_memory_usage:.3f} "
             f"net {info.total_network_in_kbps + info.total_network_out_kbps:.1f} kbps"]
    for one in info.per_running_instance_info:
        lines.append(
            f"#{one.instance_id} {one.phase} cpu {one.cpu_usage:.1f}% on {one.cpu_model} "
            f"{one.current_frequency_ghz:.2f}/{one.max_frequency_ghz:.2f} GHz "
            f"mem {one.current_memory_mb}/{one.max_memory_mb} MB ({one.memory_usage:.1%}) "
            f"net {one.network_in_kbps:.1f}/{one.network_out_kbps:.1f} kbps "
            f"{one.execution_time_sec:.1f} s {one.execution_time_ghz:.1f} GHz.s "
            f"attempt {one.execution_attempt_count}")
    return lines


def test_a_script_prints_the_progress_of_a_running_task(qconn):
    task = qconn.create_task("compat-busy", "docker-batch", 1)
    task.constants["DOCKER_CMD"] = BUSY
    task.submit()
    try:
        wait_for(task, ["FullyExecuting"], timeout=30)
        deadline = time.monotonic() + 20
        while True:
            task.update(True)
            [one] = task.status.running_instances_info.per_running_instance_info
            lines = _progress_lines(task)
            if one.cpu_usage > 0 and one.current_memory_mb >= 64:
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.5)
        assert one.phase == "execution" and one.instance_id == 0 and one.cpu_model
        assert 0 < one.memory_usage < 1 and one.max_memory_mb >= one.current_memory_mb
        assert one.execution_time_sec > 0 and one.execution_attempt_count == 1
        assert task.status.running_instances_info.average_cpu_usage > 0
        assert lines[1].startswith("#0 execution cpu ")
    finally:
        task.abort()
        wait_for(task)
        task.delete()
