"""A cluster on an external S3 store (``storage = external``): a SeaweedFS of separate processes
(the ``external_s3`` fixture) stands in for it. Users get keys limited to their bucket prefix,
from the store's IAM API, then from the operator's file; tasks move resources and results with
them."""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import requests
from botocore.exceptions import ClientError

import qcompute
from qcompute import TaskState
from qcompute.server.bootstrap import read_token
from qcompute.server.storage.external import bucket_policy
from qcompute.server.testing import ClusterProcess

BOTO_IN_TASK = """
import os, boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
try:
    s3.get_object(Bucket=os.environ["OTHER"], Key="in/data.txt")
    print("read the other user's bucket")
except ClientError as exc:
    print("other:", exc.response["Error"]["Code"])
s3.put_object(Bucket=os.environ["OWN"], Key="from-task.txt", Body=b"written by the task")
print("own: written")
"""


def _env(store, **more: str) -> dict[str, str]:
    return {"QCOMPUTE_SERVER_STORAGE": "external", "QCOMPUTE_SERVER_S3_URL": store.url,
            "QCOMPUTE_SERVER_S3_ADMIN_ACCESS_KEY": store.admin_key,
            "QCOMPUTE_SERVER_S3_ADMIN_SECRET_KEY": store.admin_secret,
            "QCOMPUTE_SERVER_INSTANCE_RO_PATHS": json.dumps([sys.prefix]), **more}


@pytest.fixture(scope="module")
def on_external(tmp_path_factory, external_s3):
    running = ClusterProcess(tmp_path_factory.mktemp("on-external"), env=_env(external_s3))
    running.start()
    yield running
    running.stop()


def _add_user(cluster, email: str) -> dict:
    reply = requests.post(f"{cluster.url}/admin/users", timeout=60,
                          headers={"Authorization": read_token(cluster.config)},
                          json={"email": email, "allowUnsandboxed": True})
    assert reply.status_code == 201, reply.text
    return reply.json()


def _connect(cluster, account: dict) -> qcompute.Connection:
    return qcompute.Connection(cluster_url=cluster.url, client_token=account["token"])


def _denied(call) -> None:
    """Refused by the store itself (the SDK explains an AccessDenied, keeping its code)."""
    with pytest.raises(qcompute.exceptions.StorageError) as caught:
        call()
    assert caught.value.code == "AccessDenied", caught.value


def _read(bucket, key: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        bucket.get_file(key, Path(tmp) / "got")
        return (Path(tmp) / "got").read_text()


def _files_task(conn, name: str, resources, results) -> qcompute.Task:
    task = conn.create_task(name, "docker-batch")
    task.resources = [resources]
    task.results = results
    task.constants["DOCKER_CMD"] = "sh -c 'tr a-z A-Z < in/data.txt > OUT.txt'"
    task.run(job_timeout=120)
    assert task.state == TaskState.SUCCESS, (task.errors, task.stderr())
    return task


def test_iam_keys_carry_tasks_and_keep_users_apart(on_external, external_s3, tmp_path):
    health = requests.get(f"{on_external.url}/health", timeout=10).json()
    assert health["parts"]["storage"] == "ok" and health["storage"] == external_s3.url
    assert health["storageProcess"].startswith(f"external S3 at {external_s3.url}")
    assert not (on_external.data_dir / "s3").exists()  # no SeaweedFS of its own
    tag = uuid.uuid4().hex[:6]
    ann, bob = _add_user(on_external, f"ann{tag}@x.org"), _add_user(on_external, f"bob{tag}@x.org")
    with _connect(on_external, ann) as conn, _connect(on_external, bob) as bob_conn:
        keys = conn.user_info["storageKeys"]
        assert keys["accessKey"] != ann["email"] and keys["secretKey"] != ann["token"]
        bob_keys = bob_conn.user_info["storageKeys"]
        resources = conn.create_bucket(f"{ann['bucketPrefix']}in")
        resources.add_string("hello external\n", "in/data.txt")
        results = conn.create_bucket(f"{ann['bucketPrefix']}out")
        _files_task(conn, "external files", resources, results)
        assert _read(results, "OUT.txt") == "HELLO EXTERNAL\n"
        # bob's keys: not ann's buckets, by S3 itself (the SDK does not check first)
        _denied(lambda: qcompute.Bucket(bob_conn, resources.uuid, create=False).list_files())
        _denied(lambda: qcompute.Bucket(bob_conn, resources.uuid, create=False).add_string("x", "in/data.txt"))
        assert _read(resources, "in/data.txt") == "hello external\n"
        # exported credentials are bob's own keys on the store: his bucket, not ann's
        own = bob_conn.create_bucket(f"{bob['bucketPrefix']}exported")
        task = bob_conn.create_task("credentials", "docker-batch")
        task.allow_credentials_to_be_exported_to_task_environment()
        task.constants.update({"OTHER": resources.uuid, "OWN": own.uuid, "DOCKER_CMD": (
            f"{shlex.quote(sys.executable)} -c {shlex.quote(BOTO_IN_TASK)}")})
        task.run(job_timeout=120)
        assert task.state == TaskState.SUCCESS, (task.errors, task.stderr())
        assert task.stdout() == "other: AccessDenied\nown: written\n"
        assert _read(own, "from-task.txt") == "written by the task"
    # removed: its keys stop working at once
    reply = requests.delete(f"{on_external.url}/admin/users/{bob['email']}?force=true",
                            headers={"Authorization": read_token(on_external.config)},
                            timeout=60)
    assert reply.status_code < 300, reply.text
    bob_s3 = external_s3.client("s3", bob_keys["accessKey"], bob_keys["secretKey"])
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        bob_s3.list_objects_v2(Bucket=own.uuid)
    ann_s3 = external_s3.client("s3", keys["accessKey"], keys["secretKey"])
    assert ann_s3.list_objects_v2(Bucket=resources.uuid)["KeyCount"] == 1  # ann's still work


def test_the_official_sdk_runs_tasks_but_cannot_sign_s3(on_external):
    """The official SDK signs S3 with (e-mail, token), which the external store does not
    know: tasks without buckets run; its bucket calls are refused (docs/external-s3.rst)."""
    import qarnot

    account = _add_user(on_external, f"q{uuid.uuid4().hex[:6]}@x.org")
    conn = qarnot.connection.Connection(client_token=account["token"],
                                        cluster_url=on_external.url)
    task = conn.create_task("official on external", "docker-batch", 1)
    task.constants["DOCKER_CMD"] = "echo from the official sdk"
    task.run()
    assert task.state == "Success" and task.stdout() == "from the official sdk\n"
    with pytest.raises(Exception, match="InvalidAccessKeyId|403|Forbidden"):
        conn.create_bucket(f"{account['bucketPrefix']}refused")


def test_operator_key_file(tmp_path_factory, external_s3, on_external):
    """File mode: the operator makes a pair scoped to the user's prefix and lists it; a
    cluster started with that file runs the user's task with it."""
    keys_file = tmp_path_factory.mktemp("keys") / "s3-keys.json"
    data = tmp_path_factory.mktemp("on-file")
    running = ClusterProcess(data, env=_env(external_s3, QCOMPUTE_SERVER_S3_USER_KEYS="file",
                                            QCOMPUTE_SERVER_S3_KEYS_FILE=str(keys_file)))
    keys_file.write_text("{}")
    running.start()
    try:
        dee = _add_user(running, f"dee{uuid.uuid4().hex[:6]}@x.org")
        with _connect(running, dee) as conn:  # no pair yet: the convention, refused by S3
            assert "storageKeys" not in conn.user_info.raw
        iam = external_s3.client("iam")  # the operator, with the store's own tools
        name = f"op-{dee['bucketPrefix'].rstrip('-')}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="p",
                            PolicyDocument=bucket_policy(dee["bucketPrefix"]))
        made = iam.create_access_key(UserName=name)["AccessKey"]
        keys_file.write_text(json.dumps({dee["email"]: {
            "accessKey": made["AccessKeyId"], "secretKey": made["SecretAccessKey"]}}))
        with _connect(running, dee) as conn:
            assert conn.user_info["storageKeys"]["accessKey"] == made["AccessKeyId"]
            resources = conn.create_bucket(f"{dee['bucketPrefix']}in")
            resources.add_string("from the file\n", "in/data.txt")
            results = conn.create_bucket(f"{dee['bucketPrefix']}out")
            _files_task(conn, "file keys", resources, results)
            assert _read(results, "OUT.txt") == "FROM THE FILE\n"
            _denied(lambda: conn.create_bucket("someone-else-s-bucket"))
    finally:
        running.stop()
