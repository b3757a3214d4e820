"""`qcompute up` as an operator runs it, with real processes: a taken port is refused before any
set-up, naming the cluster that holds it and a free port; `up` knows its own server by the
instance id in /health; no server and no pid file stay after a failure (a crash at start,
Ctrl-C); status, down and logs find the cluster from the client config; `up --open` opens the
console."""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from qcompute.cli import main
from qcompute.cli.cluster import _wait_up
from qcompute.server.ports import bindable
from tests.helpers import wait_for

from .conftest import free_port, host_pids_with, pid_alive


class Host:
    """The environment of one operator: a client config, the list of clusters, a browser."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "client.conf"
        self.opened = root / "opened.txt"
        browser = root / "browser"
        browser.write_text(f"#!/bin/sh\necho \"$1\" >> {self.opened}\n")
        browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
        self.env = {**os.environ, "QCOMPUTE_CONFIG": str(self.config),
                    "XDG_STATE_HOME": str(root / "state"), "BROWSER": str(browser)}
        for name in ("QCOMPUTE_SERVER_DATA_DIR", "QCOMPUTE_PROFILE"):
            self.env.pop(name, None)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "qcompute", *args], text=True,
                              env={**self.env, **env}, capture_output=True, timeout=180)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "qcompute", *args], text=True,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _server_pid(data: Path) -> int:
    return int((data / "server.pid").read_text().split()[0])


def _processes_of(data: Path) -> list[int]:
    """The server (``--data-dir DATA``) and its SeaweedFS (``-dir=DATA/s3``)."""
    return host_pids_with(str(data)) + host_pids_with(f"-dir={data / 's3'}")


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Host:
    return Host(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def first(host):
    """A cluster started with `up --open`; stopped by the module's last test, or here."""
    data, port, s3_port = host.root / "first", free_port(), free_port()
    up = host.run("up", "--data-dir", str(data), "--port", str(port), "--s3-port",
                  str(s3_port), "--open")
    assert up.returncode == 0, up.stderr
    url = f"http://127.0.0.1:{port}"
    yield {"data": data, "port": port, "s3_port": s3_port, "url": url, "up": up,
           "pid": _server_pid(data)}
    if (data / "server.pid").exists():
        host.run("down", "--data-dir", str(data))


def test_up_open_opens_the_console_in_the_browser(host, first):
    assert f"opened {first['url']}/console" in first["up"].stdout
    assert host.opened.read_text() == f"{first['url']}/console\n"


def test_up_open_on_a_cluster_already_up_opens_it_too(host, first, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    for name, value in host.env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["up", "--data-dir", str(first["data"]), "--port",
                                       str(first["port"]), "--s3-port",
                                       str(first["s3_port"]), "--open"])
    assert result.exit_code == 0, result.output
    assert "already up" in result.output and opened == [f"{first['url']}/console"]


def test_up_on_a_taken_api_port_names_the_cluster_and_a_free_port(host, first):
    second = host.root / "second"
    refused = host.run("up", "--data-dir", str(second), "--port", str(first["port"]),
                       "--s3-port", str(free_port()), "--config", str(host.root / "x.conf"))
    assert refused.returncode == 1
    match = re.search(rf"Error: the API port {first['port']} is taken \(by another qcompute "
                      rf"cluster at {first['data']}, pid {first['pid']}\); use --port (\d+)\n",
                      refused.stderr)
    assert match, refused.stderr
    assert bindable("127.0.0.1", int(match[1]))
    assert "Traceback" not in refused.stderr
    assert not second.exists() and not (host.root / "x.conf").exists()


def test_up_on_a_taken_s3_port_names_the_cluster_and_a_free_port(host, first):
    second = host.root / "second"
    refused = host.run("up", "--data-dir", str(second), "--port", str(free_port()),
                       "--s3-port", str(first["s3_port"]))
    assert refused.returncode == 1
    assert (f"the S3 port {first['s3_port']} (or its gRPC port {first['s3_port'] + 10000}) is "
            f"taken (by another qcompute cluster at {first['data']}, pid {first['pid']}); "
            "use --s3-port ") in refused.stderr
    assert not second.exists()


def test_up_never_takes_another_clusters_health_for_its_own(host, first, tmp_path):
    """What a server that lost the race for the port sees: the other cluster's /health."""
    theirs = (first["data"] / "instance-id").read_text().strip()
    (tmp_path / "instance-id").write_text("0" * 32)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(click.ClickException) as refused:
            _wait_up(bystander, first["url"], tmp_path, timeout=1.0)
    finally:
        bystander.kill()
        bystander.wait()
    assert (f"was not healthy within 1 s; another cluster (instance {theirs}) answers at "
            f"{first['url']}") in refused.value.message


def test_status_and_logs_find_the_cluster_from_the_client_config(host, first):
    status = host.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"pid {first['pid']}, API {first['url']} (healthy)" in status.stdout
    assert (f"data dir:  {first['data']} (from the client config's cluster {first['url']})"
            in status.stdout)
    logs = host.run("logs", "-n", "2")
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) == 2
    whole = (first["data"] / "server.log").read_text()
    assert whole.endswith(logs.stdout) and "Uvicorn running on" in host.run("logs").stdout


def test_the_active_profile_names_the_cluster(host, first):
    token = re.search(r"token = (\S+)", host.config.read_text())[1]
    other = host.root / "profiles.conf"
    other.write_text(f"[cluster]\nurl = http://127.0.0.1:9\n[client]\ntoken = x\n\n"
                     f"[profile ops]\ncluster_url = {first['url']}\nclient_token = {token}\n")
    plain = host.run("status", QCOMPUTE_CONFIG=str(other))
    assert plain.returncode == 1 and "qcompute is down" in plain.stdout
    assert "the client config's cluster http://127.0.0.1:9 was not started by qcompute up" \
        in plain.stdout
    ops = host.run("--profile", "ops", "status", QCOMPUTE_CONFIG=str(other))
    assert ops.returncode == 0 and f"data dir:  {first['data']}" in ops.stdout


def test_logs_follow_prints_lines_as_they_come_until_ctrl_c(host, first):
    follower = host.popen("logs", "-f", "-n", "0", "--access")
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(follower.stdout), daemon=True)
    reader.start()
    try:
        marker = "/no-such-page-" + os.urandom(4).hex()
        host.run("status")  # nothing printed yet: -n 0
        with pytest.raises(urllib.error.HTTPError):  # a 404, and its access line
            urllib.request.urlopen(first["url"] + marker, timeout=10)
        wait_for(lambda: any(marker in line for line in seen), timeout=10, what="the new line")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
        reader.join(timeout=5)
    assert follower.returncode == 0, follower.stderr.read()
    assert not any("Uvicorn running on" in line for line in seen)


def test_down_finds_the_cluster_from_the_client_config(host, first):
    children = [pid for pid in _processes_of(first["data"]) if pid != first["pid"]]
    down = host.run("down")
    assert down.returncode == 0 and f"qcompute stopped (pid {first['pid']}, data dir " \
        f"{first['data']})" in down.stdout
    assert not pid_alive(first["pid"]) and not [p for p in children if pid_alive(p)]
    assert not (first["data"] / "server.pid").exists()
    again = host.run("status")
    assert again.returncode == 1 and f"qcompute is down (data dir {first['data']}" in again.stdout


def test_a_server_that_dies_at_start_leaves_no_pid_file(host):
    data = host.root / "crash"
    up = host.run("up", "--data-dir", str(data), "--port", str(free_port()), "--s3-port",
                  str(free_port()), QCOMPUTE_SERVER_SECRETS_KEY_FILE=str(host.root / "no-key"))
    assert up.returncode == 1
    assert "Error: the server exited with code" in up.stderr and "no-key" in up.stderr
    assert not (data / "server.pid").exists() and not _processes_of(data)


def test_ctrl_c_while_up_waits_stops_the_server_and_leaves_no_pid_file(host):
    data = host.root / "interrupted"
    up = host.popen("up", "--data-dir", str(data), "--port", str(free_port()), "--s3-port",
                    str(free_port()))
    try:
        wait_for(lambda: (data / "server.pid").exists(), timeout=30, what="the pid file")
        server = _server_pid(data)
    finally:
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
    assert up.returncode == 130 and "interrupted" in err
    assert not pid_alive(server) and not _processes_of(data)
    assert not (data / "server.pid").exists()
