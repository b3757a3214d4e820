"""The instance runner: in-process (run_instance) and as `python -m qcompute.server.runner`;
resources and results against the session's real SeaweedFS."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

import pytest

from qcompute.server.executors.base import (Finished, InstanceKey, InstanceSpec, Output, Phase,
                                            ResourceSpec, S3Access, SnapshotDone,
                                            event_from_json, event_to_json)
from qcompute.server.runner import ACCEPTED, _InstanceRun, run_instance
from qcompute.server.runner_files import remove_workdir, sweep
from tests.helpers import s3_client, start_seaweed

ROOT = Path(__file__).resolve().parents[2]


def make_spec(tmp_path: Path, command: str, **kw) -> InstanceSpec:
    kw.setdefault("env", {"INSTANCE_ID": "7"})
    return InstanceSpec(task_uuid="t-" + uuid.uuid4().hex[:8], instance_id=7, attempt=1,
                        command=command, workdir=str(tmp_path / "work"), **kw)


class Recorder:
    """Collects events with their arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, object]] = []
        self.cancel = threading.Event()
        self._hooks: list[tuple[str, Callable[[], object], threading.Event]] = []

    def __call__(self, event) -> None:
        self.events.append((time.monotonic(), event))
        if isinstance(event, Output) and event.stream == "stderr":
            for text, action, done in self._hooks:
                if text in event.data and not done.is_set():
                    done.set()
                    action()

    def on_stderr(self, text: str, action: Callable[[], object]) -> threading.Event:
        """Call ``action`` (once) when a stderr chunk with ``text`` arrives; the returned
        event tells whether it was called."""
        done = threading.Event()
        self._hooks.append((text, action, done))
        return done

    def run(self, spec: InstanceSpec) -> Finished:
        return run_instance(spec, self, self.cancel)

    def text(self, stream: str = "stdout") -> str:
        return "".join(e.data for _, e in self.events
                       if isinstance(e, Output) and e.stream == stream)

    def phases(self) -> list[str]:
        return [e.phase for _, e in self.events if isinstance(e, Phase)]


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie may wait for an init that does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)
    return path.read_text().strip()


# -- the command -----------------------------------------------------------------------------

def test_env_output_exit_code_and_workdir_removed(tmp_path):
    rec = Recorder()
    spec = make_spec(tmp_path, "sh -c 'echo \"$INSTANCE_ID $QARNOT_RESOURCES_DIRECTORY "
                               "$QARNOT_RESULTS_DIRECTORY $TASK_PATH $PWD\"; echo oops >&2; exit 3'")
    finished = rec.run(spec)
    workdir = os.path.join(spec.workdir, "job")  # unsandboxed: the host's path
    assert rec.text() == f"7 {workdir} {workdir} {workdir} {workdir}\n"
    assert rec.text("stderr") == "oops\n"
    assert rec.phases() == ["running"]
    assert rec.events[-1][1] is finished
    assert (finished.exit_code, finished.error, finished.cancelled) == (3, None, False)
    assert finished.key == spec.key and finished.peak_memory_mb > 0
    assert not os.path.exists(spec.workdir)


def test_env_is_minimal(tmp_path, monkeypatch):
    monkeypatch.setenv("QCOMPUTE_SECRET_OF_THE_SERVER", "x")
    rec = Recorder()
    rec.run(make_spec(tmp_path, "env", env={"A": "1"}))
    names = {line.split("=", 1)[0] for line in rec.text().splitlines()}
    assert {"A", "PATH", "QARNOT_RESOURCES_DIRECTORY"} <= names
    assert "QCOMPUTE_SECRET_OF_THE_SERVER" not in names


def test_output_is_streamed_as_it_is_printed(tmp_path):
    rec = Recorder()
    rec.run(make_spec(tmp_path, "sh -c 'echo a; sleep 0.5; echo b'"))
    outputs = [(t, e.data) for t, e in rec.events if isinstance(e, Output)]
    assert [data for _, data in outputs] == ["a\n", "b\n"]
    assert outputs[1][0] - outputs[0][0] > 0.3  # "a" arrived well before "b" was printed


def test_multibyte_character_split_across_reads(tmp_path):
    rec = Recorder()
    rec.run(make_spec(tmp_path, r"""sh -c "printf '\303'; sleep 0.2; printf '\251\n'" """))
    assert rec.text() == "é\n"


def test_killed_by_signal_gives_128_plus_the_signal(tmp_path):
    finished = Recorder().run(make_spec(tmp_path, "sh -c 'kill -KILL $$'"))
    assert finished.exit_code == 128 + signal.SIGKILL and not finished.cancelled


def test_no_shell_the_command_is_split_and_run_directly(tmp_path):
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "echo hello world from node #${INSTANCE_ID}! $HOME "
                                           "'a  b' ${UNKNOWN} > out.txt"))
    assert finished.exit_code == 0
    assert rec.text() == "hello world from node #7! $HOME a  b ${UNKNOWN} > out.txt\n"


def test_unparsable_command_fails_like_a_shell_syntax_error(tmp_path):
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "echo 'unbalanced"))
    assert (finished.exit_code, finished.error) == (2, None)
    assert "cannot be split into words" in rec.text("stderr")


def test_missing_program_exits_127(tmp_path):
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "no-such-program-qc arg"))
    assert finished.exit_code == 127 and finished.error is None


def test_cancel_kills_the_whole_tree_within_the_grace_period(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # the grandchild ignores SIGTERM: only the SIGKILL after the grace period stops it
    spec = make_spec(tmp_path, """sh -c '(trap "" TERM; exec sleep 30) & echo $! > "$PID_FILE"; wait'""",
                     env={"PID_FILE": str(pid_file)}, kill_grace_seconds=0.5)
    rec = Recorder()
    result: dict[str, Finished] = {}
    thread = threading.Thread(target=lambda: result.update(f=rec.run(spec)))
    thread.start()
    grandchild = int(wait_for_file(pid_file))
    assert pid_alive(grandchild)
    cancelled_at = time.monotonic()
    rec.cancel.set()
    thread.join(5)
    elapsed = time.monotonic() - cancelled_at
    finished = result["f"]
    assert finished.cancelled and finished.exit_code == 128 + signal.SIGTERM
    assert 0.4 < elapsed < 2.0
    assert not pid_alive(grandchild)
    assert not os.path.exists(spec.workdir)


def test_background_processes_die_when_the_command_ends(tmp_path):
    pid_file = tmp_path / "bg.pid"
    finished = Recorder().run(make_spec(tmp_path, """sh -c 'sleep 30 & echo $! > "$PID_FILE"'""",
                                        env={"PID_FILE": str(pid_file)}))
    assert finished.exit_code == 0
    assert not pid_alive(int(pid_file.read_text()))


def test_cancel_before_start_runs_nothing(tmp_path):
    rec = Recorder()
    rec.cancel.set()
    finished = rec.run(make_spec(tmp_path, "echo never"))
    assert finished.cancelled and finished.exit_code is None and rec.text() == ""


def test_non_empty_workdir_is_an_infra_error_and_is_kept(tmp_path):
    spec = make_spec(tmp_path, "echo never")
    Path(spec.workdir).mkdir()
    (Path(spec.workdir) / "stale").write_text("x")
    finished = Recorder().run(spec)
    assert finished.exit_code is None and "not empty" in finished.error
    assert (Path(spec.workdir) / "stale").exists()


def test_invalid_results_regex_fails_before_running(tmp_path):
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "echo never", results_whitelist="("))
    assert finished.exit_code is None and "results_whitelist" in finished.error
    assert rec.text() == ""


def test_resource_key_escaping_the_workdir_is_refused(tmp_path):
    class Paginator:  # SeaweedFS refuses such keys; other S3 stores accept them
        def paginate(self, **kw):
            return [{"Contents": [{"Key": "in/../../etc/evil"}]}]

    class Client:
        def get_paginator(self, name):
            return Paginator()

    spec = make_spec(tmp_path, "echo never", s3=S3Access("http://127.0.0.1:9", "k", "s"),
                     resources=(ResourceSpec("b", prefix="in/"),))
    run = _InstanceRun(spec, Recorder(), threading.Event())
    run.files._client = Client()
    finished = run.execute()
    assert finished.exit_code is None and "s3://b/in/../../etc/evil" in finished.error


# -- the process entry point ------------------------------------------------------------------

def start_runner(spec: InstanceSpec) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "qcompute.server.runner"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write(spec.to_json())
    proc.stdin.close()
    return proc


def test_module_entry_writes_json_lines(tmp_path):
    proc = start_runner(make_spec(tmp_path, 'echo "hello ${INSTANCE_ID}"'))
    events = [event_from_json(line) for line in proc.stdout]
    assert proc.wait(10) == 0
    assert [e.kind for e in events] == ["phase", "output", "finished"]
    assert events[1].data == "hello 7\n" and events[2].exit_code == 0


def test_module_entry_sigterm_cancels(tmp_path):
    proc = start_runner(make_spec(tmp_path, "sh -c 'echo started; sleep 30'",
                                  kill_grace_seconds=1))
    assert json.loads(proc.stdout.readline())["phase"] == "running"
    assert json.loads(proc.stdout.readline())["data"] == "started\n"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    finished = event_from_json(proc.stdout.readline())
    assert proc.wait(5) == 0 and time.monotonic() - sent < 1.0
    assert isinstance(finished, Finished) and finished.cancelled
    assert finished.exit_code == 128 + signal.SIGTERM


def start_worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qcompute.server.runner", "--serve"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def serve_one(proc: subprocess.Popen, spec: InstanceSpec) -> list:
    """Send one spec; the events up to its Finished, after the ACCEPTED line."""
    proc.stdin.write(spec.to_json() + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == ACCEPTED
    events = [event_from_json(proc.stdout.readline())]
    while not isinstance(events[-1], Finished):
        events.append(event_from_json(proc.stdout.readline()))
    return events


def test_serve_runs_specs_one_after_another_until_eof(tmp_path):
    proc = start_worker()
    first = serve_one(proc, make_spec(tmp_path, """sh -c 'echo "a $INSTANCE_ID"; exit 3'"""))
    second = serve_one(proc, make_spec(tmp_path, "sh -c 'echo b $PPID'"))
    assert [e.kind for e in first] == ["phase", "output", "finished"]
    assert first[1].data == "a 7\n" and first[2].exit_code == 3
    assert second[1].data == f"b {proc.pid}\n" and second[2].exit_code == 0
    proc.stdin.close()
    assert proc.wait(5) == 0 and proc.stdout.read() == ""


def test_serve_sigterm_cancels_the_instance_not_the_worker(tmp_path):
    proc = start_worker()
    assert serve_one(proc, make_spec(tmp_path, "true"))[-1].exit_code == 0
    proc.send_signal(signal.SIGTERM)  # idle: ignored, and not kept for the next instance
    time.sleep(0.1)
    assert serve_one(proc, make_spec(tmp_path, "sleep 0.2"))[-1].exit_code == 0
    proc.stdin.write(make_spec(tmp_path, "sh -c 'echo started; sleep 30'",
                               kill_grace_seconds=1).to_json() + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == ACCEPTED
    assert json.loads(proc.stdout.readline())["phase"] == "running"
    assert json.loads(proc.stdout.readline())["data"] == "started\n"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    finished = event_from_json(proc.stdout.readline())
    assert time.monotonic() - sent < 1.0
    assert finished.cancelled and finished.exit_code == 128 + signal.SIGTERM
    assert serve_one(proc, make_spec(tmp_path, "true"))[-1].exit_code == 0  # still serving
    proc.stdin.close()
    assert proc.wait(5) == 0


# -- S3: resources in, results out ------------------------------------------------------------

@pytest.fixture
def buckets(seaweed, s3_admin):
    """A resource bucket with a few keys and an empty result bucket."""
    tag = uuid.uuid4().hex[:8]
    resources, results = f"res-{tag}", f"out-{tag}"
    s3_admin.create_bucket(Bucket=resources)
    s3_admin.create_bucket(Bucket=results)
    for key, body in [("in/a.txt", b"A"), ("in/sub/b.txt", b"B"), ("in/dir/", b""),
                      ("other/c.txt", b"C")]:
        s3_admin.put_object(Bucket=resources, Key=key, Body=body)
    access = S3Access(seaweed.endpoint_url, seaweed.admin_access_key, seaweed.admin_secret_key)
    return access, resources, results


def result_keys(s3_admin, bucket: str) -> dict[str, bytes]:
    contents = s3_admin.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3_admin.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in contents}


def test_resources_are_filtered_and_stripped(tmp_path, buckets):
    access, resources, _ = buckets
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "sh -c 'find . -type f | sort; cat sub/b.txt'",
                                 s3=access,
                                 resources=(ResourceSpec(resources, "in/", "in/"),)))
    assert finished.exit_code == 0 and finished.error is None
    assert rec.text() == "./a.txt\n./sub/b.txt\nB"
    assert rec.phases() == ["downloading", "running"]


def test_results_uploaded_with_filters_and_unchanged_resources_skipped(tmp_path, buckets,
                                                                       s3_admin):
    access, resources, results = buckets
    command = ("sh -c 'mkdir -p out && echo r > out/r1.txt && echo l > out/skip.log"
               " && echo x > top.txt && echo more >> in/sub/b.txt'")
    rec = Recorder()
    finished = rec.run(make_spec(
        tmp_path, command, s3=access, resources=(ResourceSpec(resources, "in/"),),
        result_bucket=results, results_prefix="run1/", results_whitelist=r"^(out|in)/",
        results_blacklist=r"\.log$"))
    assert finished.error is None and finished.results_uploaded == 2
    assert result_keys(s3_admin, results) == {"run1/out/r1.txt": b"r\n",
                                              "run1/in/sub/b.txt": b"Bmore\n"}
    assert rec.phases() == ["downloading", "running", "uploading"]


def test_results_uploaded_on_cancel_only_when_asked(tmp_path, buckets, s3_admin):
    access, _, results = buckets
    for upload, expected in [(False, {}), (True, {"c/partial.txt": b"p\n"})]:
        rec = Recorder()
        spec = make_spec(tmp_path, "sh -c 'echo p > partial.txt; echo go; sleep 30'", s3=access,
                         result_bucket=results, results_prefix="c/", kill_grace_seconds=0.5,
                         upload_results_on_cancel=upload)
        threading.Timer(0.3, rec.cancel.set).start()
        finished = rec.run(spec)
        assert finished.cancelled and finished.error is None
        assert result_keys(s3_admin, results) == expected


def test_missing_resource_bucket_is_an_infra_error(tmp_path, buckets):
    access, _, _ = buckets
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "echo never", s3=access,
                                 resources=(ResourceSpec("no-such-bucket-qc"),)))
    assert finished.exit_code is None
    assert "s3://no-such-bucket-qc/" in finished.error and "NoSuchBucket" in finished.error
    assert rec.text() == "" and not os.path.exists(tmp_path / "work")


def test_upload_that_keeps_failing_names_the_files_and_keeps_them(tmp_path, buckets):
    access, _, results = buckets
    wrong = S3Access(access.endpoint_url, access.access_key, "wrong-secret")
    runs = tmp_path / "runs"
    rec = Recorder()
    spec = make_spec(tmp_path, "sh -c 'echo run >> \"$RUNS\"; echo r > r.txt; mkdir sub; "
                               "echo s > sub/s.txt'", env={"RUNS": str(runs)}, s3=wrong,
                     result_bucket=results, results_prefix="p/", result_upload_attempts=2)
    finished = rec.run(spec)
    assert finished.exit_code == 0 and finished.results_failed
    assert finished.results_uploaded == 0 and runs.read_text() == "run\n"
    assert finished.error.startswith(f"results upload to s3://{results}/p/ failed after 2 tries")
    assert "2 of 2 result files not uploaded: 'r.txt', 'sub/s.txt'; last error: upload of " \
           f"s3://{results}/p/" in finished.error and "SignatureDoesNotMatch" in finished.error
    assert "qcompute: 2 result files not uploaded yet" in rec.text("stderr")
    assert "trying again in 1 s (try 2 of at most 2)" in rec.text("stderr")
    assert (Path(spec.workdir) / "job" / "sub" / "s.txt").read_text() == "s\n"  # kept


def test_no_upload_try_starts_after_the_time_bound(tmp_path, buckets):
    access, _, results = buckets
    wrong = S3Access(access.endpoint_url, access.access_key, "wrong-secret")
    rec = Recorder()
    finished = rec.run(make_spec(tmp_path, "sh -c 'echo r > r.txt'", s3=wrong,
                                 result_bucket=results, result_upload_attempts=1000,
                                 result_upload_seconds=2))
    tries = int(finished.error.split(" failed after ")[1].split()[0])
    assert 2 <= tries <= 4  # pauses of 1 s, then what is left of the 2 s after the first
    assert rec.text("stderr").count("trying again") == tries - 1


def test_a_cancel_stops_the_upload_tries(tmp_path, buckets):
    access, _, results = buckets
    wrong = S3Access(access.endpoint_url, access.access_key, "wrong-secret")
    rec = Recorder()
    spec = make_spec(tmp_path, "sh -c 'echo r > r.txt'", s3=wrong, result_bucket=results,
                     result_upload_attempts=1000, result_upload_seconds=600)
    cancel_when_retrying = rec.on_stderr("trying again", rec.cancel.set)
    finished = rec.run(spec)
    assert cancel_when_retrying.is_set()
    assert finished.cancelled and finished.exit_code == 0
    assert finished.error is None and not finished.results_failed  # its results are not wanted
    assert not os.path.exists(spec.workdir)


def test_only_the_files_not_uploaded_yet_are_sent_again(tmp_path, buckets, s3_admin):
    access, _, results = buckets
    rec = Recorder()
    spec = make_spec(tmp_path, "sh -c 'echo run >> \"$RUNS\"; for f in a b c flaky; do "
                               "echo $f > $f.txt; done'", env={"RUNS": str(tmp_path / "runs")},
                     s3=access, result_bucket=results)
    run = _InstanceRun(spec, rec, rec.cancel)
    sent: Counter = Counter()

    def drop_the_first_put_of_flaky(request, **_):  # a connection lost on the real client
        key = unquote(urlsplit(request.url).path.split("/", 2)[2])
        sent[key] += 1
        if key == "flaky.txt" and sent[key] == 1:
            raise OSError("injected: connection reset by peer")

    run.files.s3().meta.events.register("before-send.s3.PutObject", drop_the_first_put_of_flaky)
    finished = run.execute()
    assert finished.error is None and finished.results_uploaded == 4
    assert sent == {"a.txt": 1, "b.txt": 1, "c.txt": 1, "flaky.txt": 2}
    assert result_keys(s3_admin, results)["flaky.txt"] == b"flaky\n"
    assert (tmp_path / "runs").read_text() == "run\n"
    assert "1 result file not uploaded yet (upload of s3://" in rec.text("stderr")
    assert not os.path.exists(spec.workdir)


def test_upload_waits_for_the_storage_to_come_back(tmp_path):
    """A SeaweedFS of its own, stopped while the command runs, started again while the runner
    tries: the results arrive, and the command ran once."""
    weed = start_seaweed(tmp_path / "weed")
    try:
        s3 = s3_client(weed)
        s3.create_bucket(Bucket="out")
        weed.stop()
        rec = Recorder()
        spec = make_spec(tmp_path, "sh -c 'echo run >> \"$RUNS\"; echo r > r.txt'",
                         env={"RUNS": str(tmp_path / "runs")},
                         s3=S3Access(weed.endpoint_url, weed.admin_access_key,
                                     weed.admin_secret_key),
                         result_bucket="out", result_upload_attempts=20,
                         result_upload_seconds=120)
        rec.on_stderr("trying again", weed.start)  # in the recorder's thread: the runner waits
        finished = rec.run(spec)
        assert finished.error is None and finished.results_uploaded == 1, finished.error
        assert s3_client(weed).get_object(Bucket="out", Key="r.txt")["Body"].read() == b"r\n"
        assert (tmp_path / "runs").read_text() == "run\n"
        assert not os.path.exists(spec.workdir)
    finally:
        weed.stop()


def test_names_s3_cannot_store_are_named_and_the_rest_uploaded(tmp_path, buckets, s3_admin):
    access, _, results = buckets
    deep = "/".join(["d" * 200] * 6)  # a key of 1,205 bytes + the file name
    command = ("python3 -c \"import os; open(b'bad\\xff.txt', 'w').write('x'); "
               f"os.makedirs('{deep}'); open('{deep}/long-name.txt', 'w').write('x'); "
               "open('fine.txt', 'w').write('ok')\"")
    finished = Recorder().run(make_spec(tmp_path, command, s3=access, result_bucket=results))
    assert finished.exit_code == 0 and finished.results_failed
    assert finished.results_uploaded == 1
    assert result_keys(s3_admin, results) == {"fine.txt": b"ok"}
    assert finished.error.startswith("2 result files cannot be stored in S3: ")
    assert "b'bad\\xff.txt' (the name is not valid UTF-8)" in finished.error
    assert "(its key is over 1,024 bytes)" in finished.error and "'ddd" in finished.error
    finished.error.encode("utf-8")  # storable
    assert not os.path.exists(tmp_path / "work")  # nothing that could be sent again: removed


def test_empty_result_files_do_not_stall_uploads(tmp_path, buckets, s3_admin):
    """botocore + SeaweedFS: an empty PutObject with Expect: 100-continue stalled the next
    request on that connection for the read timeout (60 s)."""
    access, _, results = buckets
    command = "sh -c 'for i in $(seq 1 12); do : > empty$i; echo $i > full$i; done'"
    finished = Recorder().run(make_spec(tmp_path, command, s3=access, result_bucket=results))
    assert finished.error is None and finished.results_uploaded == 24
    assert finished.wall_time_sec < 10
    assert result_keys(s3_admin, results)["empty3"] == b""


def test_runner_killed_takes_the_command_tree_with_it(tmp_path):
    """SIGKILL of the runner (or a server crash) leaves no process of the command behind."""
    pid_file = tmp_path / "bg.pid"
    proc = start_runner(make_spec(tmp_path, """sh -c 'sleep 300 & echo $! > "$PID_FILE"; wait'""",
                                  env={"PID_FILE": str(pid_file)}))
    grandchild = int(wait_for_file(pid_file))
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 3
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(grandchild)


def test_event_errors_are_always_storable():
    key = InstanceKey("t", 0, 1)
    finished = Finished(key, exit_code=None, error="bad\udcff.txt\x00 " + "x" * 10000)
    assert finished.error.startswith("bad\\xff.txt\\x00 xxx") and finished.error.endswith("…")
    assert len(finished.error) == 4000 and finished.error.encode("utf-8")
    assert event_from_json(event_to_json(finished)) == finished
    done = SnapshotDone(key, "s", ok=False, error="\ud800", keys=("k\udcc3",))
    assert (done.error, done.keys) == ("\\ud800", ("k\\xc3",))
    assert Finished(key, exit_code=0).error is None


# -- a full disk ------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (the tests run as root), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_resources_that_fill_the_disk_end_the_instance_with_a_reason(small_disk, buckets,
                                                                      s3_admin):
    access, resources, _ = buckets
    s3_admin.put_object(Bucket=resources, Key="big/data.bin", Body=b"x" * (3 << 20))
    rec = Recorder()
    finished = rec.run(make_spec(small_disk, "echo never", s3=access,
                                 resources=(ResourceSpec(resources, "big/"),)))
    assert finished.exit_code is None and rec.text() == ""
    assert finished.error == (f"download of s3://{resources}/big/data.bin failed: no space left "
                              "on the node's disk for the working directory")
    assert os.listdir(small_disk) == []  # removed: the disk is free again


def test_a_command_that_fills_the_disk_is_told_so(small_disk):
    rec = Recorder()
    spec = make_spec(small_disk, "sh -c 'head -c 3000000 /dev/zero > big.bin'")
    finished = rec.run(spec)
    assert finished.exit_code == 1 and finished.error is None  # the command's own failure
    assert "No space left on device" in rec.text("stderr")
    assert "qcompute: the disk of the working directory is full" in rec.text("stderr")
    assert os.listdir(small_disk) == []


# -- working directories ----------------------------------------------------------------------

def test_the_task_directory_goes_with_its_last_attempt(tmp_path):
    task_dir = tmp_path / "work" / "t1"
    first = InstanceSpec(task_uuid="t1", instance_id=0, attempt=1, command="true", env={},
                         workdir=str(task_dir / "0-1"))
    second = InstanceSpec(task_uuid="t1", instance_id=1, attempt=1, command="true", env={},
                          workdir=str(task_dir / "1-1"))
    (task_dir / "1-1").mkdir(parents=True)  # another instance's, still running
    assert Recorder().run(first).exit_code == 0
    assert os.listdir(task_dir) == ["1-1"]
    remove_workdir(second.workdir)
    assert not task_dir.exists() and (tmp_path / "work").exists()


def test_sweep_removes_all_but_the_running_ones(tmp_path):
    work = tmp_path / "work"
    for attempt in ["t1/0-1", "t1/0-2", "t2/3-1"]:
        (work / attempt / "job" / "sub").mkdir(parents=True)
        (work / attempt / "job" / "sub" / "file").write_text("x")
    (work / "t1" / "0-1" / "job" / "sub").chmod(0o500)  # the command made it read-only
    assert sweep(str(work), keep=[str(work / "t1" / "0-2")]) == 2
    assert sorted(str(p.relative_to(work)) for p in work.iterdir()) == ["t1"]
    assert os.listdir(work / "t1") == ["0-2"]
    assert sweep(str(work)) == 1 and os.listdir(work) == []
    assert sweep(str(tmp_path / "none")) == 0
