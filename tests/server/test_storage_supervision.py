"""Supervision of the embedded storage: a process that dies is started again (backoff, a limit),
and a real SeaweedFS killed with SIGKILL comes back on the same ports with its data, keys and S3
front working; past the limit it stays down and says so."""
from __future__ import annotations

import logging
import os
import signal
import subprocess

import boto3
import pytest
from botocore.config import Config

from qcompute.server.settings import ServerSettings
from qcompute.server.storage import EmbeddedStorage
from qcompute.server.storage.supervisor import RestartPolicy, Supervised, describe_exit
from tests.helpers import free_port, s3_client

from .conftest import wait_for


def _sleeper(policy: RestartPolicy, ready=lambda proc: None) -> Supervised:
    return Supervised("sleeper", lambda: subprocess.Popen(["sleep", "300"]), ready, policy)


def _stop(keeper: Supervised) -> None:
    proc = keeper.release()
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def test_the_backoff_doubles_per_recent_restart_up_to_its_cap():
    policy = RestartPolicy(limit=9, window=60, backoff=1.5, max_backoff=10)
    assert [policy.delay(n) for n in range(5)] == [1.5, 3, 6, 10, 10]
    assert describe_exit(-9) == "code -9 (SIGKILL)" and describe_exit(3) == "code 3"


def test_a_process_that_dies_is_restarted_and_the_exit_code_logged(caplog):
    caplog.set_level(logging.WARNING, logger="qcompute.server.storage.supervisor")
    keeper = _sleeper(RestartPolicy(limit=3, window=60, backoff=0))
    first = keeper.launch()
    keeper.arm()
    try:
        os.kill(first.pid, signal.SIGKILL)
        second = wait_for(lambda: keeper.proc is not first and keeper.problem() is None
                          and keeper.proc)
        assert second.poll() is None and keeper.restarts == 1
        assert (f"sleeper (pid {first.pid}) exited with code -9 (SIGKILL); restart 1 of at "
                "most 3 in 60 s") in caplog.text
        assert f"sleeper restarted (pid {second.pid})" in caplog.text
    finally:
        _stop(keeper)


def test_past_the_limit_it_stays_down_and_says_so(caplog):
    keeper = _sleeper(RestartPolicy(limit=1, window=600, backoff=0))
    first = keeper.launch()
    keeper.arm()
    try:
        first.kill()
        second = wait_for(lambda: keeper.proc is not first and keeper.problem() is None
                          and keeper.proc)
        second.kill()
        problem = wait_for(lambda: "stays down" in (keeper.problem() or "") and keeper.problem())
        assert problem == (f"sleeper (pid {second.pid}) exited with code -9 (SIGKILL) and stays "
                           "down (the limit: 1 restart in 600 s)")
        assert keeper.proc is second and keeper.restarts == 1
    finally:
        _stop(keeper)


def test_a_restart_that_never_gets_ready_counts_against_the_limit():
    def never_ready(proc):
        raise RuntimeError("not answering")

    keeper = _sleeper(RestartPolicy(limit=2, window=600, backoff=0), ready=never_ready)
    first = keeper.launch()
    keeper.arm()
    try:
        first.kill()
        wait_for(lambda: "stays down" in (keeper.problem() or ""))
        assert keeper.restarts == 0 and keeper.proc.poll() == -signal.SIGKILL
    finally:
        _stop(keeper)


def test_a_released_process_is_not_restarted():
    keeper = _sleeper(RestartPolicy(limit=5, window=60, backoff=0))
    first = keeper.launch()
    keeper.arm()
    assert keeper.release() is first
    first.kill()
    first.wait()
    assert keeper.proc is first and keeper.restarts == 0


@pytest.mark.timeout(120)
def test_a_killed_seaweedfs_comes_back_with_its_data_keys_and_front(tmp_path):
    settings = ServerSettings(data_dir=tmp_path, s3_port=free_port(), s3_restart_limit=1,
                              s3_restart_backoff_seconds=0.5)
    storage = EmbeddedStorage(settings)
    storage.start()
    try:
        weed = storage.seaweed
        assert storage.check() is None
        storage.provision_user("dora@example.com", "dora-token", "dora-")
        dora = s3_client(weed, "dora@example.com", "dora-token")
        dora.create_bucket(Bucket="dora-keep")
        dora.put_object(Bucket="dora-keep", Key="k", Body=b"kept")
        front = boto3.session.Session().client(  # through the S3 front, as the qarnot SDK
            "s3", endpoint_url=storage.create_bucket_url, aws_access_key_id="dora@example.com",
            aws_secret_access_key="dora-token", region_name="us-east-1",
            config=Config(retries={"mode": "standard", "total_max_attempts": 8}))
        assert front.get_object(Bucket="dora-keep", Key="k")["Body"].read() == b"kept"
        first_pid, ports = weed.pid, dict(weed.ports)

        os.kill(first_pid, signal.SIGKILL)
        assert wait_for(lambda: storage.check() == f"SeaweedFS (pid {first_pid}) exited with "
                        "code -9 (SIGKILL); restarting")
        wait_for(lambda: weed.pid != first_pid and storage.check() is None, timeout=60)
        assert weed.ports == ports and weed.restarts == 1
        assert f"pid {weed.pid}, restarted 1 time)" in storage.describe()
        assert dora.get_object(Bucket="dora-keep", Key="k")["Body"].read() == b"kept"
        assert front.get_object(Bucket="dora-keep", Key="k")["Body"].read() == b"kept"
        front.put_object(Bucket="dora-keep", Key="after", Body=b"new")  # the same pooled client
        assert dora.get_object(Bucket="dora-keep", Key="after")["Body"].read() == b"new"

        storage._front.stop()  # the official SDK's endpoint is part of the storage too
        assert storage.check() == "the S3 front of the qarnot SDK is not running"
        storage._front.start()
        assert storage.check() is None

        os.kill(weed.pid, signal.SIGKILL)  # past s3_restart_limit = 1
        gone = wait_for(lambda: "stays down" in (storage.check() or "") and storage.check())
        assert gone.endswith("stays down (the limit: 1 restart in 600 s)")
        assert not storage.is_running()
    finally:
        storage.stop()
