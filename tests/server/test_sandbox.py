"""The instance sandbox (bubblewrap, a per-worker network through pasta, cgroups), through the
runner: what an instance sees, what it cannot reach, and what it cannot leave behind."""
from __future__ import annotations

import shlex
import socket
import threading
import time
import uuid

import pytest

from qcompute.server.executors.base import ResourceSpec, Telemetry
from qcompute.server.runner import run_instance
from qcompute.server import sandbox as sandbox_module
from qcompute.server.sandbox import Sandbox, SandboxConfig, resolve

from tests.helpers import host_pids_with, sh

from .test_runner import Recorder, make_spec, result_keys
from .test_runner_control import s3  # noqa: F401 (a fixture: S3 access, two buckets)

pytestmark = pytest.mark.timeout(120)


class Listener:
    """A TCP server on the host's loopback that answers every connection with a word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(b"reached")
            conn.close()


@pytest.fixture(scope="module")
def listeners():
    allowed, internal = Listener(), Listener()
    yield allowed, internal
    allowed.sock.close()
    internal.sock.close()


@pytest.fixture(scope="module")
def sandbox(listeners):
    """A worker's sandbox whose network forwards only the first listener's port (as the API's)."""
    box = Sandbox(SandboxConfig(enabled=True, network=True,
                                forward_ports=(listeners[0].port,))).start()
    yield box
    box.close()


def run(sandbox: Sandbox, spec, rec: Recorder = None) -> tuple[Recorder, object]:
    rec = rec or Recorder()
    return rec, run_instance(spec, rec, rec.cancel, sandbox=sandbox)


def test_layout_and_environment_of_a_qarnot_node(sandbox, tmp_path):
    rec, finished = run(sandbox, make_spec(tmp_path, sh(
        'pwd; echo "$TASK_PATH $TMP_PATH $TMP_RAMFS_PATH $HOME"; '
        'echo "$QARNOT_RESOURCES_DIRECTORY $QARNOT_RESULTS_DIRECTORY"; id -u; ls /')))
    assert finished.exit_code == 0, rec.text("stderr")
    lines = rec.text().splitlines()
    assert lines[:4] == ["/job", "/job /tmp /ramfs /tmp", "/job /job", "0"]
    assert set(lines[4:]) == {"bin", "dev", "etc", "job", "lib", "lib64", "proc", "ramfs",
                              "sbin", "tmp", "usr"}


def test_the_host_is_out_of_sight(sandbox, tmp_path, monkeypatch):
    secret = tmp_path / "server-secret.txt"
    secret.write_text("the data dir")
    monkeypatch.setenv("QCOMPUTE_SERVER_SECRET", "x")  # the runner's own environment
    rec, finished = run(sandbox, make_spec(tmp_path, sh(
        f'cat {secret} 2>&1; ls /proc | grep -c "^[0-9]"; env; cat /etc/passwd; '
        'test -e /etc/ssl/private || echo no-host-keys; test -e /etc/shadow || echo no-shadow')))
    out = rec.text()
    assert finished.exit_code == 0
    assert "No such file or directory" in out and "the data dir" not in out
    assert int(out.splitlines()[1]) <= 4  # sh, ls, grep (and init): nothing of the host
    assert "QCOMPUTE_SERVER_SECRET" not in out and "root:x:0:0" in out
    assert "no-host-keys" in out and "no-shadow" in out


def test_writes_outside_job_and_tmp_fail(sandbox, tmp_path):
    rec, finished = run(sandbox, make_spec(tmp_path, sh(
        "for p in /x /usr/x /etc/x /bin/x; do touch $p 2>/dev/null && echo wrote $p; done; "
        "touch /job/a /tmp/b /ramfs/c && echo ok")))
    assert finished.exit_code == 0 and rec.text() == "ok\n"


def test_nothing_the_instance_starts_outlives_it(sandbox, tmp_path):
    marker = f"301.{uuid.uuid4().int % 10**6}"  # a sleep only this test starts
    rec, finished = run(sandbox, make_spec(tmp_path, sh(
        f"setsid sleep {marker} & nohup sleep {marker} >/dev/null 2>&1 & echo started")))
    assert finished.exit_code == 0 and rec.text() == "started\n"
    deadline = time.monotonic() + 3
    while host_pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert host_pids_with(marker) == []


def test_cancel_ends_the_whole_sandbox_after_the_grace_period(sandbox, tmp_path):
    marker = f"302.{uuid.uuid4().int % 10**6}"
    spec = make_spec(tmp_path, sh(f'(trap "" TERM; exec sleep {marker}) & echo up; wait'),
                     kill_grace_seconds=0.5)
    rec = Recorder()
    result = {}
    thread = threading.Thread(target=lambda: result.update(f=run(sandbox, spec, rec)[1]))
    thread.start()
    deadline = time.monotonic() + 10
    while "up" not in rec.text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert host_pids_with(marker)
    rec.cancel.set()
    thread.join(5)
    assert result["f"].cancelled and result["f"].exit_code == 128 + 15  # sh got SIGTERM
    assert host_pids_with(marker) == []  # the TERM-proof child got the SIGKILL


def test_network_reaches_the_forwarded_ports_only(sandbox, listeners, tmp_path):
    allowed, internal = listeners
    probe = ("import socket\n"
             "for port in {ports}:\n"
             "    try:\n"
             "        print(port, socket.create_connection(('127.0.0.1', port), 2).recv(9))\n"
             "    except OSError as exc:\n"
             "        print(port, type(exc).__name__)\n")
    command = "python3 -c " + shlex.quote(probe.format(ports=(allowed.port, internal.port)))
    rec, finished = run(sandbox, make_spec(tmp_path, command))
    assert finished.exit_code == 0, rec.text("stderr")
    assert rec.text().splitlines() == [f"{allowed.port} b'reached'",
                                       f"{internal.port} ConnectionRefusedError"]
    rec, finished = run(sandbox, make_spec(tmp_path, command, network=False))
    assert rec.text().splitlines()[0] in (f"{allowed.port} ConnectionRefusedError",
                                          f"{allowed.port} OSError")


def test_unparsable_command_and_missing_program(sandbox, tmp_path):
    rec, finished = run(sandbox, make_spec(tmp_path, 'echo "oops'))
    assert finished.exit_code == 2 and "cannot be split" in rec.text("stderr")
    _, finished = run(sandbox, make_spec(tmp_path, "./not-there.sh"))
    assert finished.exit_code == 127 and finished.error is None


def test_a_sandbox_that_cannot_start_is_an_infrastructure_failure(sandbox, tmp_path,
                                                                   monkeypatch):
    real = Sandbox.argv
    monkeypatch.setattr(Sandbox, "argv", lambda self, *a, **kw: [
        *real(self, *a, **kw)[:1], "--no-such-bwrap-option", *real(self, *a, **kw)[1:]])
    rec, finished = run(sandbox, make_spec(tmp_path, "echo never"))
    assert finished.exit_code is None and rec.text() == ""
    assert finished.error.startswith("the sandbox did not start")


def test_telemetry_of_a_busy_instance(sandbox, tmp_path):
    busy = ("import time\nx = bytearray(50 * 2**20)\nt = time.time()\n"
            "while time.time() - t < 2.5: pass")
    rec, finished = run(sandbox, make_spec(tmp_path, "python3 -c " + shlex.quote(busy)))
    assert finished.exit_code == 0
    samples = [e for _, e in rec.events if isinstance(e, Telemetry)]
    assert len(samples) >= 2 and all(s.key == finished.key for s in samples)
    assert max(s.cpu_usage for s in samples) > 20
    assert max(s.memory_mb for s in samples) > 50 and samples[-1].max_memory_mb > 50
    assert finished.peak_memory_mb > 50


def test_memory_cap_kills_an_instance_that_goes_over(tmp_path):
    box = Sandbox(SandboxConfig(enabled=True, memory_mb=64)).start()
    try:
        rec, finished = run(box, make_spec(
            tmp_path, "python3 -c 'x = bytearray(400 * 2**20); print(len(x))'"))
        assert finished.exit_code == 128 + 9 and rec.text() == ""  # the OOM killer's SIGKILL
        rec, finished = run(box, make_spec(tmp_path, "python3 -c 'print(len(bytearray(2**20)))'"))
        assert finished.exit_code == 0 and rec.text() == "1048576\n"
    finally:
        box.close()


# -- files: resources in, results out ----------------------------------------------------------

def test_resource_scripts_arrive_executable(sandbox, tmp_path, s3, s3_admin):
    access, resources, _ = s3
    s3_admin.put_object(Bucket=resources, Key="run.sh", Body=b"#!/bin/sh\necho ran from $0\n")
    s3_admin.put_object(Bucket=resources, Key="bin/tool", Body=b"#!/bin/sh\necho tool\n")
    rec, finished = run(sandbox, make_spec(tmp_path, sh("./run.sh; /job/bin/tool"), s3=access,
                                           resources=(ResourceSpec(resources),)))
    assert finished.exit_code == 0, rec.text("stderr")
    assert rec.text() == "ran from ./run.sh\ntool\n"


def test_results_never_follow_links_out_of_the_job(sandbox, tmp_path, s3, s3_admin):
    access, _, results = s3
    outside = tmp_path / "host-file.txt"
    outside.write_text("host data")
    rec, finished = run(sandbox, make_spec(tmp_path, sh(
        f"echo mine > mine.txt; ln -s {outside} link.txt; ln -s / rootlink; "
        "ln /usr/bin/env hard 2>/dev/null || echo no-hardlink; mkfifo pipe"),
        s3=access, result_bucket=results))
    assert finished.exit_code == 0 and finished.error is None
    assert rec.text() == "no-hardlink\n"  # /usr is another mount: link(2) answers EXDEV
    assert result_keys(s3_admin, results) == {"mine.txt": b"mine\n"}


def test_a_link_swapped_in_during_a_snapshot_is_not_followed(sandbox, tmp_path, s3):
    """The runner opens every path below the workdir without following links: a file
    replaced by a link to a host file between listing and upload is skipped."""
    from qcompute.server.runner_files import InstanceFiles

    access, _, results = s3
    job = tmp_path / "job"
    job.mkdir()
    (tmp_path / "host.txt").write_text("host data")
    (job / "sub").symlink_to(tmp_path)  # a directory link: never walked through
    files = InstanceFiles(make_spec(tmp_path, "true", s3=access), str(job), threading.Event())
    with pytest.raises(OSError):
        files._upload_from("sub/host.txt", files.s3(), results, "stolen.txt")
    (job / "f.txt").symlink_to(tmp_path / "host.txt")
    with pytest.raises(OSError):
        files._upload_from("f.txt", files.s3(), results, "stolen.txt")


# -- what the server probes at start -------------------------------------------------------------

def test_resolve_reports_what_works_here(monkeypatch):
    wanted = SandboxConfig(enabled=True, network=True, forward_ports=(1,))
    assert resolve(wanted) == (wanted, "bubblewrap sandbox, isolated network (API and S3 "
                                       "reachable)")
    real_which = sandbox_module.shutil.which
    monkeypatch.setattr(sandbox_module.shutil, "which",
                        lambda name: None if name == "pasta" else real_which(name))
    config, note = resolve(wanted)
    assert config.enabled and not config.network and "install the passt package" in note
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    config, note = resolve(wanted)
    assert not config.enabled and note.startswith("UNSANDBOXED") and "bubblewrap" in note
    assert resolve(SandboxConfig(enabled=False))[1] == "unsandboxed (turned off by the operator)"

