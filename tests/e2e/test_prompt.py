"""The SDK at the prompt, on the real cluster: follow() while the task runs, run(check=True),
and what a user sees after Ctrl-C in task.run() (a subprocess given SIGINT)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from qcompute import TaskFailedError, TaskState

ROOT = Path(__file__).resolve().parents[2]
# the script a user would write: one long task, run() and wait
SCRIPT = textwrap.dedent("""
    import sys
    import qcompute

    conn = qcompute.Connection(sys.argv[1])
    task = conn.create_task("ctrl-c", "docker-batch")
    task.tags = [sys.argv[2]]
    task.constants["DOCKER_CMD"] = "sleep 120"
    task.run(abort_on_interrupt=sys.argv[3] == "abort")
""")


def test_follow_yields_lines_while_the_task_runs(conn):
    task = conn.create_task("follow", "docker-batch", 2)
    task.constants["DOCKER_CMD"] = (
        "sh -c 'echo first $INSTANCE_ID; sleep 4; printf \"second $INSTANCE_ID\\nno newline\"'")
    task.submit()
    lines, states_at_first = [], None
    for line in task.follow():
        if states_at_first is None:
            states_at_first = conn.retrieve_task(task.uuid).state
        lines.append(line)
    assert states_at_first is not None and not states_at_first.is_final()
    assert task.update(flushcache=True) and task.state == TaskState.SUCCESS
    assert sorted(lines[:2]) == ["first 0", "first 1"]
    # each instance's last line lacks a newline: in the task's stream it runs into the next
    assert "".join(f"{line}\n" for line in lines) in (task.stdout(), task.stdout() + "\n")
    assert list(task.follow(instance=1)) == ["first 1", "second 1", "no newline"]


def test_run_with_check_raises_with_the_stderr_tail(conn):
    task = conn.create_task("check", "docker-batch")
    task.constants["DOCKER_CMD"] = "sh -c 'seq 1 30 >&2; echo bad input >&2; exit 3'"
    with pytest.raises(TaskFailedError) as caught:
        task.run(check=True)
    failure = caught.value
    assert failure.state == TaskState.FAILURE and failure.task is task
    assert failure.errors, "a failed task carries its errors"
    assert failure.stderr_tail.splitlines() == [str(n) for n in range(12, 31)] + ["bad input"]
    assert f"task 'check' ({task.uuid}) ended in Failure" in str(failure)


def _interrupted_run(cluster, conn, mode: str) -> tuple[subprocess.CompletedProcess, object]:
    tag = f"ctrl-c-{uuidlib.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(cluster.config), tag, mode],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    try:
        task = None
        for _ in range(600):  # 0.1 s apart: until the task runs
            found = conn.tasks(tags=[tag])
            if found and found[0].state == TaskState.FULLY_EXECUTING:
                task = found[0]
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
        assert task is not None, "the task never ran"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err), task


def test_ctrl_c_in_run_names_the_task_and_leaves_it_running(cluster, conn):
    result, task = _interrupted_run(cluster, conn, "keep")
    try:
        err = result.stderr
        assert result.returncode in (-signal.SIGINT, 130), err
        assert f"task 'ctrl-c' ({task.uuid}) keeps running" in err
        assert f"conn.retrieve_task('{task.uuid}').resume()" in err
        assert f"conn.retrieve_task('{task.uuid}').abort()" in err
        # the hint, then a traceback of the user's line and run()'s re-raise: no HTTP internals
        assert len(err.splitlines()) <= 12, err
        assert "urllib3" not in err and "requests" not in err and "During handling" not in err
        assert err.rstrip().endswith("KeyboardInterrupt")
        task.update(flushcache=True)
        assert not task.state.is_final(), task.state
    finally:
        task.abort()


def test_ctrl_c_in_run_with_abort_on_interrupt_aborts(cluster, conn):
    result, task = _interrupted_run(cluster, conn, "abort")
    assert f"task 'ctrl-c' ({task.uuid}) was aborted" in result.stderr
    assert task.wait(timeout=60) and task.state == TaskState.CANCELLED
