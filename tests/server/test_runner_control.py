"""Control of a running instance: snapshots (instant and periodic), resource refreshes, results on
cancel; in-process, through the worker's control lines, and through the LocalExecutor. S3 is the
session's real SeaweedFS."""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from qcompute.server.executors.base import (Finished, Output, ResourcesRefreshed, ResourceSpec,
                                            S3Access, SnapshotDone, SnapshotRequest,
                                            event_from_json)
from qcompute.server.executors.local import LocalExecutor
from qcompute.server.runner import ACCEPTED, run_instance
from qcompute.server.runner_control import InstanceControl

from .test_local_executor import Events
from tests.helpers import sh

from .test_runner import Recorder, make_spec, result_keys, start_worker


@pytest.fixture
def s3(seaweed, s3_admin):
    """S3 access for the runner, a resource bucket and an empty result bucket."""
    tag = uuid.uuid4().hex[:8]
    resources, results = f"rres-{tag}", f"rout-{tag}"
    s3_admin.create_bucket(Bucket=resources)
    s3_admin.create_bucket(Bucket=results)
    access = S3Access(seaweed.endpoint_url, seaweed.admin_access_key, seaweed.admin_secret_key)
    return access, resources, results


class Run:
    """run_instance in a thread, with a control inbox; helpers to wait for events."""

    def __init__(self, spec) -> None:
        self.spec, self.rec, self.control = spec, Recorder(), InstanceControl()
        self.result: dict[str, Finished] = {}
        self.thread = threading.Thread(target=lambda: self.result.update(
            f=run_instance(spec, self.rec, self.rec.cancel, self.control)))
        self.thread.start()

    def events(self, kind) -> list:
        return [e for _, e in self.rec.events if isinstance(e, kind)]

    def wait(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert time.monotonic() < deadline, "condition not reached in time"
            assert self.thread.is_alive() or predicate(), "the instance ended first"
            time.sleep(0.02)
        return value

    def wait_output(self, text: str) -> None:
        self.wait(lambda: text in self.rec.text())

    def finish(self, timeout: float = 10.0) -> Finished:
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.result["f"]

    def assert_finished_last(self) -> None:
        assert isinstance(self.rec.events[-1][1], Finished)
        assert sum(isinstance(e, Finished) for _, e in self.rec.events) == 1


WAIT_FOR = 'while [ ! -f "{0}" ]; do sleep 0.02; done'


def test_instant_snapshots_upload_changed_files_while_the_command_runs(tmp_path, s3, s3_admin):
    access, _, results = s3
    command = ("echo one > a.txt; mkdir -p d; echo skip > d/x.log; echo ready; "
               + WAIT_FOR.format("go") + "; echo two > b.txt; echo again; sleep 30")
    run = Run(make_spec(tmp_path, sh(command), s3=access, kill_grace_seconds=0.5))
    run.wait_output("ready")
    run.control.snapshot(SnapshotRequest("s1", results, "snap/", blacklist=r"\.log$"))
    first = run.wait(lambda: run.events(SnapshotDone))[0]
    assert (first.snapshot_id, first.ok, first.files, first.keys) == ("s1", True, 1,
                                                                      ("snap/a.txt",))
    assert first.bytes == first.size == 4
    assert result_keys(s3_admin, results) == {"snap/a.txt": b"one\n"}
    assert run.thread.is_alive() and not run.events(Finished)  # the command was not stopped

    (Path(run.spec.workdir, "job") / "go").write_text("")
    run.wait_output("again")
    run.control.snapshot(SnapshotRequest("s2", results, "snap/", blacklist=r"\.log$"))
    second = run.wait(lambda: len(run.events(SnapshotDone)) == 2 and run.events(SnapshotDone))[1]
    assert second.ok and set(second.keys) == {"snap/b.txt", "snap/go"}  # a.txt is unchanged
    assert set(result_keys(s3_admin, results)) == {"snap/a.txt", "snap/b.txt", "snap/go"}
    run.rec.cancel.set()
    assert run.finish().cancelled
    run.assert_finished_last()


def test_periodic_snapshots_every_second(tmp_path, s3, s3_admin):
    """Rounds follow one another while the command runs (each step waits for a round to have
    sent its file, so a loaded machine changes nothing), and unchanged files are not resent."""
    access, _, results = s3
    command = ("echo 1 > f1.txt; until [ -e go2 ]; do sleep 0.05; done; echo 2 > f2.txt; "
               "until [ -e go3 ]; do sleep 0.05; done; echo 3 > f3.txt; echo 4 > f4.txt")
    spec = make_spec(tmp_path, sh(command), s3=access, result_bucket=results, results_prefix="end/",
                     snapshot_interval_sec=1,
                     periodic_snapshot=SnapshotRequest("periodic-1", results, "p/"))
    run = Run(spec)
    job = Path(spec.workdir, "job")
    for step in (2, 3):
        run.wait(lambda: any(f"p/f{step - 1}.txt" in r.keys for r in run.events(SnapshotDone)),
                 timeout=20)
        (job / f"go{step}").write_text("")
    finished = run.finish(timeout=15)
    assert finished.exit_code == 0 and finished.error is None
    rounds = run.events(SnapshotDone)
    assert len(rounds) >= 2 and {r.snapshot_id for r in rounds} == {"periodic-1"}
    assert all(r.ok for r in rounds)
    sent = [key for r in rounds for key in r.keys]
    assert len(sent) == len(set(sent)) >= 2  # unchanged files are not sent again
    stored = result_keys(s3_admin, results)
    assert {"p/f1.txt", "p/f2.txt"} <= set(stored)
    assert {f"end/f{i}.txt" for i in range(1, 5)} <= set(stored)  # the final upload still ran
    run.assert_finished_last()


def test_periodic_snapshot_can_be_started_and_stopped_while_running(tmp_path, s3, s3_admin):
    access, _, results = s3
    run = Run(make_spec(tmp_path, sh("echo x > x.txt; echo ready; sleep 30"), s3=access,
                        kill_grace_seconds=0.5))
    run.wait_output("ready")
    run.control.set_periodic(1, SnapshotRequest("late", results))
    run.wait(lambda: run.events(SnapshotDone), timeout=5)
    assert result_keys(s3_admin, results) == {"x.txt": b"x\n"}
    run.control.set_periodic(0, None)
    count = len(run.events(SnapshotDone))
    time.sleep(1.5)
    assert len(run.events(SnapshotDone)) <= count + 1  # at most one round was under way
    run.rec.cancel.set()
    run.finish()


def test_refresh_adds_new_and_changed_resources_and_deletes_nothing(tmp_path, s3, s3_admin):
    access, resources, _ = s3
    for key, body in [("in/a.txt", b"A1"), ("in/old.txt", b"O")]:
        s3_admin.put_object(Bucket=resources, Key=key, Body=body)
    command = ("echo ready; " + WAIT_FOR.format("b.txt")
               + "; cat a.txt b.txt; test -f old.txt && echo kept; echo mine > mine.txt")
    run = Run(make_spec(tmp_path, sh(command), s3=access,
                        resources=(ResourceSpec(resources, "in/", "in/"),)))
    run.wait_output("ready")
    s3_admin.put_object(Bucket=resources, Key="in/a.txt", Body=b"A2")
    s3_admin.put_object(Bucket=resources, Key="in/b.txt", Body=b"B")
    s3_admin.delete_object(Bucket=resources, Key="in/old.txt")
    run.control.refresh()
    finished = run.finish()
    assert finished.exit_code == 0 and finished.error is None
    [refreshed] = run.events(ResourcesRefreshed)
    assert refreshed.ok and refreshed.files == 2  # a.txt (changed) and b.txt (new)
    assert run.rec.text() == "ready\nA2Bkept\n"
    run.assert_finished_last()


def test_refresh_failure_is_reported_and_the_instance_goes_on(tmp_path, s3, s3_admin):
    access, resources, _ = s3
    s3_admin.put_object(Bucket=resources, Key="a.txt", Body=b"A")
    run = Run(make_spec(tmp_path, sh("echo ready; sleep 1; echo done"), s3=access,
                        resources=(ResourceSpec(resources),)))
    run.wait_output("ready")
    for obj in s3_admin.list_objects_v2(Bucket=resources).get("Contents", []):
        s3_admin.delete_object(Bucket=resources, Key=obj["Key"])
    s3_admin.delete_bucket(Bucket=resources)
    run.control.refresh()
    finished = run.finish()
    [refreshed] = run.events(ResourcesRefreshed)
    assert not refreshed.ok and "NoSuchBucket" in refreshed.error
    assert finished.exit_code == 0 and finished.error is None and run.rec.text().endswith("done\n")


def test_snapshot_failure_does_not_fail_the_instance(tmp_path, s3):
    access, _, results = s3
    wrong = S3Access(access.endpoint_url, access.access_key, "wrong-secret")
    run = Run(make_spec(tmp_path, sh("echo x > x.txt; echo ready; sleep 0.5"), s3=wrong))
    run.wait_output("ready")
    run.control.snapshot(SnapshotRequest("bad", results))
    run.control.snapshot(SnapshotRequest("bad-regex", results, whitelist="("))
    finished = run.finish()
    denied, regex = run.events(SnapshotDone)
    assert not denied.ok and "SignatureDoesNotMatch" in denied.error
    assert denied.snapshot_id == "bad" and denied.size == 2 and denied.bytes == 0
    assert not regex.ok and "whitelist" in regex.error
    assert finished.exit_code == 0 and finished.error is None


def test_results_and_queued_snapshots_on_cancel(tmp_path, s3, s3_admin):
    access, _, results = s3
    run = Run(make_spec(tmp_path, sh("echo p > partial.txt; echo ready; sleep 30"), s3=access,
                        result_bucket=results, results_prefix="c/", kill_grace_seconds=0.5,
                        upload_results_on_cancel=True))
    run.wait_output("ready")
    run.rec.cancel.set()
    run.control.snapshot(SnapshotRequest("after-cancel", results, "s/"))
    finished = run.finish()
    assert finished.cancelled and finished.error is None and finished.results_uploaded == 1
    assert result_keys(s3_admin, results) == {"c/partial.txt": b"p\n"}
    [snap] = run.events(SnapshotDone)  # answered, before Finished
    assert not snap.ok and "cancelled" in snap.error
    run.assert_finished_last()
    assert not run.control.snapshot(SnapshotRequest("too-late", results))  # closed


# -- the worker's control lines ---------------------------------------------------------------

def control_line(spec, kind: str, **fields) -> str:
    return json.dumps({"control": kind, "key": asdict(spec.key), **fields}) + "\n"


def test_worker_control_lines_reach_the_running_instance_only(tmp_path, s3, s3_admin):
    access, _, results = s3
    proc = start_worker()
    stale = make_spec(tmp_path, "true")
    request = asdict(SnapshotRequest("w1", results, "w/"))
    proc.stdin.write(control_line(stale, "snapshot", request=request))  # idle: dropped
    spec = make_spec(tmp_path, sh("echo x > x.txt; echo ready; sleep 0.7"), s3=access)
    proc.stdin.write(spec.to_json() + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == ACCEPTED
    events = [event_from_json(proc.stdout.readline()) for _ in range(2)]  # running, ready
    assert isinstance(events[1], Output) and events[1].data == "ready\n"
    proc.stdin.write(control_line(stale, "snapshot", request=request))  # another instance's
    proc.stdin.write(control_line(spec, "snapshot", request=request))
    proc.stdin.write(control_line(spec, "refresh"))
    proc.stdin.write("{\"control\": \"nonsense\", \"key\": 3}\n")  # logged, ignored
    proc.stdin.flush()
    while not isinstance(events[-1], Finished):
        events.append(event_from_json(proc.stdout.readline()))
    snaps = [e for e in events if isinstance(e, SnapshotDone)]
    assert [(s.snapshot_id, s.ok, s.keys) for s in snaps] == [("w1", True, ("w/x.txt",))]
    assert [e.ok for e in events if isinstance(e, ResourcesRefreshed)] == [True]
    assert events[-1].exit_code == 0
    assert result_keys(s3_admin, results) == {"w/x.txt": b"x\n"}
    # still serving specs after control lines, and EOF still ends it
    proc.stdin.write(make_spec(tmp_path, sh("echo next")).to_json() + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == ACCEPTED
    seen = [event_from_json(proc.stdout.readline()) for _ in range(3)]
    assert seen[1].data == "next\n" and seen[2].exit_code == 0
    proc.stdin.close()
    assert proc.wait(5) == 0


def test_local_executor_snapshot_and_refresh(tmp_path, s3, s3_admin):
    access, resources, results = s3
    s3_admin.put_object(Bucket=resources, Key="r.txt", Body=b"R")
    events = Events()
    executor = LocalExecutor(events, capacity=1)
    try:
        spec = make_spec(tmp_path, sh("echo ready; " + WAIT_FOR.format("new.txt")
                                      + "; cat new.txt; echo out > out.txt; sleep 30"), s3=access,
                         resources=(ResourceSpec(resources),), kill_grace_seconds=0.5)
        executor.submit(spec)
        # sent before the worker accepted the spec: held back until its ACCEPTED line
        executor.snapshot(spec.key, SnapshotRequest("early", results, "e/"))
        seen = []
        while not any(isinstance(e, Output) and "ready" in e.data for e in seen):
            seen.append(events.next())
        s3_admin.put_object(Bucket=resources, Key="new.txt", Body=b"N")
        executor.refresh_resources(spec.key)
        while not any(isinstance(e, Output) and "N" in e.data for e in seen):
            seen.append(events.next())
        time.sleep(0.2)  # out.txt is written
        executor.snapshot(spec.key, SnapshotRequest("later", results, "l/"))
        while len([e for e in seen if isinstance(e, SnapshotDone)]) < 2:
            seen.append(events.next())
        early, later = [e for e in seen if isinstance(e, SnapshotDone)]
        assert early.snapshot_id == "early" and early.ok
        assert later.snapshot_id == "later" and later.ok and "l/out.txt" in later.keys
        assert "l/r.txt" not in later.keys  # unchanged resources are not results
        assert [e.files for e in seen if isinstance(e, ResourcesRefreshed)] == [1]
        with pytest.raises(KeyError):
            executor.snapshot(make_spec(tmp_path, "true").key, SnapshotRequest("x", results))
        executor.cancel(spec.key)
        assert events.until_finished(spec.key)[-1].cancelled
        with pytest.raises(KeyError):  # over
            executor.refresh_resources(spec.key)
    finally:
        executor.shutdown()
