"""The `qcompute` command as a user runs it: up, the hello-world sample, users, status, down."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import free_port, host_pids_with, pid_alive

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cli(env: dict):
    def qcompute(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qcompute", *args], env=env, text=True,
                              capture_output=True, timeout=180)
    return qcompute


def test_up_sample_users_status_down(tmp_path):
    data, config = tmp_path / "data", tmp_path / "client.conf"
    env = {**os.environ, "QCOMPUTE_CONFIG": str(config)}
    where = ["--data-dir", str(data)]
    qcompute = _cli(env)

    ports = ["--port", str(free_port()), "--s3-port", str(free_port())]
    up = qcompute("up", *where, *ports, "--config", str(config))
    assert up.returncode == 0, up.stderr
    server_pid = int((data / "server.pid").read_text().split()[0])
    children = _children(server_pid)
    try:
        assert "is up at" in up.stdout and config.exists()
        again = qcompute("up", *where, *ports, "--config", str(config))
        assert again.returncode == 0 and "already up" in again.stdout
        assert int((data / "server.pid").read_text().split()[0]) == server_pid

        sample = subprocess.run([sys.executable, "samples/hello_world.py"], cwd=REPO, env=env,
                                text=True, capture_output=True, timeout=120)
        assert sample.returncode == 0, sample.stderr
        assert sample.stdout == "hello world from 0!\n"

        added = qcompute("user", "add", "bob@example.com", "--config", str(config))
        assert added.returncode == 0, added.stderr
        assert "token:" in added.stdout and "bob-" in added.stdout
        duplicate = qcompute("user", "add", "bob@example.com", "--config", str(config))
        assert duplicate.returncode != 0 and "already exists" in duplicate.stderr
        listed = qcompute("user", "list", "--config", str(config))
        assert "owner@qcompute.local" in listed.stdout and "bob@example.com" in listed.stdout

        status = qcompute("status", *where)
        assert status.returncode == 0 and "healthy" in status.stdout
        for part in ("database:  ok", "storage:   ok; embedded SeaweedFS", "executor:  ok; local",
                     "scheduler: ok"):
            assert part in status.stdout, status.stdout
        assert f"SeaweedFS (pid {children[0]})" in status.stdout
        assert "instances: bubblewrap sandbox, isolated network" in status.stdout
        assert children, "the server should supervise SeaweedFS"
    finally:
        down = qcompute("down", *where)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not pid_alive(server_pid)
    assert not [pid for pid in children if pid_alive(pid)], "down left processes behind"
    assert qcompute("status", *where).returncode == 1


def test_status_names_a_storage_that_stays_down_and_exits_non_zero(tmp_path):
    data = tmp_path / "data"
    qcompute = _cli({**os.environ, "QCOMPUTE_CONFIG": str(tmp_path / "client.conf"),
                     "QCOMPUTE_SERVER_S3_RESTART_LIMIT": "0"})
    where = ["--data-dir", str(data)]
    up = qcompute("up", *where, "--port", str(free_port()), "--s3-port", str(free_port()))
    assert up.returncode == 0, up.stderr
    try:
        weed = host_pids_with(f"-dir={(data / 's3').resolve()}")
        assert len(weed) == 1
        os.kill(weed[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "stays down" not in (status := qcompute("status", *where)).stdout:
            assert time.monotonic() < deadline, status.stdout
        assert status.returncode == 1
        assert "(DEGRADED)" in status.stdout
        assert (f"storage:   down: SeaweedFS (pid {weed[0]}) exited with code -9 (SIGKILL) and "
                "stays down (restarts are off); embedded SeaweedFS (not running)") in status.stdout
        assert "database:  ok" in status.stdout and "scheduler: ok" in status.stdout
    finally:
        assert qcompute("down", *where).returncode == 0


def test_an_unsandboxed_cluster_says_so_and_refuses_users_unless_allowed(tmp_path):
    data, config = tmp_path / "data", tmp_path / "client.conf"
    qcompute = _cli({**os.environ, "QCOMPUTE_CONFIG": str(config),
                     "QCOMPUTE_SERVER_SANDBOX": "off"})
    where = ["--data-dir", str(data)]
    up = qcompute("up", *where, "--port", str(free_port()), "--s3-port", str(free_port()),
                  "--config", str(config))
    assert up.returncode == 0, up.stderr
    try:
        status = qcompute("status", *where)
        assert "instances: WARNING unsandboxed" in status.stdout, status.stdout
        assert "INSTANCES RUN UNSANDBOXED" in (data / "server.log").read_text()
        refused = qcompute("user", "add", "eve@example.com", "--config", str(config))
        assert refused.returncode != 0
        assert "unsandboxed" in refused.stderr and "bubblewrap" in refused.stderr
        allowed = qcompute("user", "add", "eve@example.com", "--allow-unsandboxed",
                           "--config", str(config))
        assert allowed.returncode == 0 and "token:" in allowed.stdout, allowed.stderr
    finally:
        assert qcompute("down", *where).returncode == 0
