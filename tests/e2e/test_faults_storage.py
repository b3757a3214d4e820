"""SIGKILL of the embedded SeaweedFS, on a cluster of this module's own, during an SDK upload, an
SDK download and a task's upload of its results: the supervisor restarts it, the transfer
finishes, the file is intact (sha256) and was never visible in part; ``/health`` answered 503
naming the storage while it was down, and 200 after."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from qcompute import TaskState
from qcompute.server.testing import ClusterProcess
from tests.helpers import host_pids_with, sh

SIZE = 160 * 1024 * 1024  # multipart (8 MiB parts): a transfer under way for a while
KILL_DOWN_SECONDS = 2  # the supervisor's first backoff: how long the storage is surely down


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = ClusterProcess(tmp_path_factory.mktemp("faults-storage"), workers=2, env={
        "QCOMPUTE_SERVER_S3_RESTART_BACKOFF_SECONDS": str(KILL_DOWN_SECONDS),
        # each test kills once; a short window keeps the backoff from doubling between tests
        "QCOMPUTE_SERVER_S3_RESTART_WINDOW_SECONDS": "5"})
    running.start()
    yield running
    running.stop()


@pytest.fixture
def conn(cluster):
    connection = cluster.connection()
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def admin(cluster):
    """A boto3 client with the storage's admin keys, that gives up at once (for watching)."""
    keys = json.loads((cluster.data_dir / "s3-admin.json").read_text())
    return boto3.session.Session().client(
        "s3", endpoint_url=f"http://127.0.0.1:{cluster.s3_port}", region_name="us-east-1",
        aws_access_key_id=keys["access_key"], aws_secret_access_key=keys["secret_key"],
        config=Config(connect_timeout=2, read_timeout=10,
                      retries={"mode": "standard", "total_max_attempts": 1}))


def weed_pid(cluster: ClusterProcess) -> int:
    """The cluster's SeaweedFS: the one process started with its data dir."""
    pids = host_pids_with(f"-dir={(cluster.data_dir / 's3').resolve()}")
    assert len(pids) == 1, pids
    return pids[0]


def health(cluster: ClusterProcess) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{cluster.url}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class HealthWatch:
    """Polls ``/health`` in a thread and keeps each answer's status and parts."""

    def __init__(self, cluster: ClusterProcess) -> None:
        self.cluster, self.seen = cluster, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            status, body = health(self.cluster)
            self.seen.append((status, body["status"], body["parts"]))

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def assert_storage_was_down_then_ok(self, pid: int) -> None:
        down = [parts for status, _, parts in self.seen if status == 503]
        assert down, "/health never answered 503 while SeaweedFS was down"
        for status, state, parts in self.seen:
            assert (status, state) in ((200, "ok"), (503, "degraded"))
            assert {k: v for k, v in parts.items() if k != "storage"} == {
                "database": "ok", "executor": "ok", "scheduler": "ok"}
            assert (status == 200) == (parts["storage"] == "ok")
        assert any(parts["storage"] == f"down: SeaweedFS (pid {pid}) exited with code -9 "
                   "(SIGKILL); restarting" for parts in down), down
        deadline = time.monotonic() + 60
        while health(self.cluster)[0] != 200:
            assert time.monotonic() < deadline, "/health stayed 503 after the restart"
            time.sleep(0.1)


def random_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for _ in range(SIZE // (8 << 20)):
            block = os.urandom(8 << 20)
            handle.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256_of_object(admin, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in admin.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def in_thread(call) -> tuple[threading.Thread, list]:
    """Run ``call`` in a thread; the list gets its result or exception."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def uploading(admin, bucket: str) -> bool:
    try:
        return bool(admin.list_multipart_uploads(Bucket=bucket).get("Uploads"))
    except Exception:  # noqa: BLE001 - the bucket may not exist yet
        return False


def kill_weed(cluster: ClusterProcess) -> int:
    pid = weed_pid(cluster)
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.timeout(240)
def test_an_sdk_upload_finishes_across_a_storage_kill(cluster, conn, admin, tmp_path):
    bucket = conn.create_bucket("faults-upload")
    path = tmp_path / "big.bin"
    digest = random_file(path)
    sizes_seen = set()
    with HealthWatch(cluster) as watch:
        thread, outcome = in_thread(lambda: bucket.add_file(str(path), "big.bin"))
        wait_until(lambda: uploading(admin, "faults-upload"), 60, "the multipart upload")
        pid = kill_weed(cluster)
        assert thread.is_alive(), "the upload ended before the kill: make SIZE larger"
        while thread.is_alive():  # the object is absent or whole, never in part
            try:
                sizes_seen.add(admin.head_object(Bucket="faults-upload", Key="big.bin")
                               ["ContentLength"])
            except Exception:  # noqa: BLE001 - not there yet, or the storage is down
                pass
            time.sleep(0.02)
        watch.assert_storage_was_down_then_ok(pid)
    assert outcome and not isinstance(outcome[0], BaseException), outcome
    assert weed_pid(cluster) != pid
    assert sizes_seen <= {SIZE}
    assert sha256_of_object(admin, "faults-upload", "big.bin") == digest
    assert admin.list_multipart_uploads(Bucket="faults-upload").get("Uploads") is None


@pytest.mark.timeout(240)
def test_an_sdk_download_finishes_across_a_storage_kill(cluster, conn, admin, tmp_path):
    bucket = conn.create_bucket("faults-download")
    source = tmp_path / "source.bin"
    digest = random_file(source)
    bucket.add_file(str(source), "big.bin")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "big.bin"
    sizes_seen = set()
    with HealthWatch(cluster) as watch:
        thread, outcome = in_thread(lambda: bucket.get_file("big.bin", str(target)))
        # the transfer writes a temporary file beside the target, renamed when complete
        wait_until(lambda: any(p.stat().st_size for p in out.iterdir()), 60, "the download")
        pid = kill_weed(cluster)
        assert thread.is_alive(), "the download ended before the kill: make SIZE larger"
        while thread.is_alive():
            try:
                sizes_seen.add(target.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        watch.assert_storage_was_down_then_ok(pid)
    assert outcome == [str(target)], outcome
    assert sizes_seen <= {SIZE}
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert [p.name for p in out.iterdir()] == ["big.bin"]  # no temporary file left


@pytest.mark.timeout(300)
def test_a_task_uploading_its_results_across_a_storage_kill_keeps_them(cluster, conn, admin):
    results = conn.create_bucket("faults-results")
    task = conn.create_task("results across a kill", "docker-batch")
    task.results = results
    task.constants["DOCKER_CMD"] = sh(f"head -c {SIZE} /dev/urandom > big.bin && "
                                      "sha256sum big.bin > big.sha256")
    task.submit()
    with HealthWatch(cluster) as watch:
        wait_until(lambda: uploading(admin, "faults-results"), 120, "the results' upload")
        pid = kill_weed(cluster)
        task.wait(timeout=240)
        watch.assert_storage_was_down_then_ok(pid)
    assert task.state in (TaskState.SUCCESS, TaskState.FAILURE)
    if task.state == TaskState.SUCCESS:
        expected = admin.get_object(Bucket="faults-results", Key="big.sha256")["Body"].read()
        assert expected.decode().split()[0] == sha256_of_object(admin, "faults-results",
                                                                "big.bin")
    else:  # allowed: an infrastructure failure that names the upload
        messages = " ".join(error.message for error in task.errors)
        assert "upload" in messages and "big.bin" in messages, messages
