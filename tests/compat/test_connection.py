"""The official SDK connects, reads the catalogue and the account, and is handed the S3 front."""
from __future__ import annotations

import pytest
import qarnot
import requests
from qarnot.exceptions import MissingProfileException, UnauthorizedException

from .conftest import COMPAT_EMAIL
from .helpers import OFFICIAL_AGENT


def test_profiles(qconn):
    assert "docker-batch" in qconn.profiles_names()
    profile = qconn.retrieve_profile("docker-batch")
    assert profile.name == "docker-batch"
    assert "DOCKER_CMD" in dict(profile.constants)
    assert dict(qconn.profile_details("docker-batch").constants) == dict(profile.constants)
    assert qconn.profile_details("no-such-profile") is None
    with pytest.raises(MissingProfileException):
        qconn.retrieve_profile("no-such-profile")


def test_user_info(qconn):
    info = qconn.user_info
    assert info.email == COMPAT_EMAIL  # also the S3 access key the SDK signs with
    assert info.max_instances > 0 and info.max_cores > 0  # the limits the server enforces
    assert info.max_task is None and info.max_bucket is None  # no quota: absent, not invented
    assert isinstance(info.task_count, int) and isinstance(info.running_task_count, int)
    assert isinstance(info.bucket_count, int) and isinstance(info.used_quota_bytes_bucket, int)
    assert info.running_instance_count >= 0 and info.computing_quotas.user.flex.max_cores > 0


def test_bad_token_is_refused(cluster):
    with pytest.raises(UnauthorizedException):
        qarnot.Connection(cluster_url=cluster.url, client_token="not-a-token")


def test_settings_hand_the_official_sdk_the_s3_front(cluster, qconn):
    """GET /settings by User-Agent: the official SDK gets the front, everyone else SeaweedFS."""
    def storage(agent: str) -> str:
        return requests.get(f"{cluster.url}/settings", headers={"User-Agent": agent},
                            timeout=10).json()["storage"]

    direct, front = storage("qcompute/0.1 python-requests"), storage(OFFICIAL_AGENT)
    assert front != direct
    assert qconn.storage == front


def test_owner_config_file_works_for_the_official_sdk(cluster, bucket_name):
    """The config file `qcompute up` writes has no [storage] url: the official SDK asks GET
    /settings, is handed the front, and CreateBucket of a bucket it owns succeeds, as it does
    against Qarnot (SeaweedFS itself answers 409 BucketAlreadyOwnedByYou and the SDK raises)."""
    conn = qarnot.Connection(fileconf=str(cluster.config))
    name = f"owner-{bucket_name('cfg')}"
    bucket = conn.create_bucket(name)
    try:
        assert conn.create_bucket(name).uuid == name
        assert conn.retrieve_or_create_bucket(name).uuid == name
        assert name in [b.uuid for b in conn.buckets()]
    finally:
        bucket.delete()



def test_polls_5_s_apart_keep_one_connection(qconn):
    """``task.wait(5)`` sleeps exactly 5 s between polls and reuses its connection: the server
    keeps idle connections longer (with uvicorn's default, 5 s, they race: ConnectionResetError,
    or a new connection each time)."""
    task = qconn.create_task("compat-keep-alive", "docker-batch", 1)
    task.constants["DOCKER_CMD"] = "sleep 60"
    task.submit()
    ports: list[int] = []  # the local port of each request's connection

    def record(response, *args, **kwargs):
        ports.append(response.raw.connection.sock.getsockname()[1])

    qconn._http.hooks["response"].append(record)
    try:
        for _ in range(4):
            assert task.wait(5) is False  # GET, 5 s idle, GET: the task still runs
    finally:
        qconn._http.hooks["response"].remove(record)
        task.abort()
        task.delete()
    assert len(ports) >= 8 and len(set(ports)) == 1, f"connections by local port: {ports}"
