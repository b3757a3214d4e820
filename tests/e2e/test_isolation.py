"""Isolation on the real embedded cluster: each user's S3 identity (e-mail / token) reaches only
that user's buckets; rotation and removal take effect at once, without a restart."""
from __future__ import annotations

import json
import shlex
import sqlite3
import sys
import time
import uuid

import boto3
import pytest
import qarnot
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner

import qcompute
from qcompute._storage import no_continue_for_empty_body
from qcompute.cli import main
from qcompute.exceptions import (
    MissingTaskException,
    QComputeError,
    UnauthorizedException,
)


def _storage_url(cluster) -> str:
    """SeaweedFS's URL, as the cluster hands it to qcompute's SDK (the config file has none)."""
    return requests.get(f"{cluster.url}/settings", timeout=10).json()["storage"]


def s3(cluster, access_key: str, secret_key: str):
    """A plain boto3 client as that identity (path-style, us-east-1, no retries)."""
    client = boto3.session.Session().client(
        "s3", endpoint_url=_storage_url(cluster), aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      connect_timeout=5, read_timeout=10))
    client.meta.events.register("before-call.s3", no_continue_for_empty_body)
    return client


def refused(call, *codes: str) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    code = caught.value.response["Error"]["Code"]
    assert code in (codes or ("AccessDenied",)), caught.value
    return code


class Account:
    def __init__(self, cluster, created: dict) -> None:
        self.cluster = cluster
        self.email, self.token, self.prefix = (created["email"], created["token"],
                                               created["bucketPrefix"])

    @property
    def s3(self):
        return s3(self.cluster, self.email, self.token)

    def connection(self) -> qcompute.Connection:
        return qcompute.Connection(cluster_url=self.cluster.url, client_token=self.token,
                                   storage_url=_storage_url(self.cluster), retry_count=0)

    def api_status(self, path: str = "/info") -> int:
        return requests.get(f"{self.cluster.url}{path}", headers={"Authorization": self.token},
                            timeout=10).status_code


@pytest.fixture(scope="module")
def owner(cluster):
    conn = cluster.connection()
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def add_user(cluster, owner):
    tag = uuid.uuid4().hex[:6]

    def add(name: str) -> Account:
        created = owner._http.post("/admin/users", json={"email": f"{name}.{tag}@example.com"})
        return Account(cluster, created)

    return add


@pytest.fixture(scope="module")
def alice(add_user):
    return add_user("alice")


@pytest.fixture(scope="module")
def bob(add_user):
    return add_user("bob")


@pytest.fixture(scope="module")
def alice_bucket(alice):
    name = f"{alice.prefix}data"
    alice.s3.create_bucket(Bucket=name)
    alice.s3.put_object(Bucket=name, Key="secret.txt", Body=b"alice only")
    return name


def cli(cluster, *args: str) -> str:
    result = CliRunner().invoke(main, ["user", *args, "--config", str(cluster.config)])
    assert result.exit_code == 0, result.output
    return result.output


def token_of(output: str) -> str:
    return next(line.split()[-1] for line in output.splitlines() if line.startswith("token:"))


def test_each_user_gets_a_distinct_prefix(alice, bob, owner):
    assert alice.prefix.startswith("alice") and bob.prefix.startswith("bob")
    assert not alice.prefix.startswith(bob.prefix) and not bob.prefix.startswith(alice.prefix)
    with alice.connection() as conn:
        assert conn.user_info["bucketPrefix"] == alice.prefix
    assert owner.user_info["bucketPrefix"] == ""


def test_info_counts_each_users_own_objects(cluster, add_user):
    """GET /info: the caller's own tasks, running instances, buckets and bytes (from S3), read
    by qcompute's SDK and by the official one; no invented quotas."""
    carol, dave = add_user("info-carol"), add_user("info-dave")  # the names are module-wide
    for account, sizes in ((carol, (100, 2000)), (dave, (7,))):
        for n, size in enumerate(sizes):
            account.s3.create_bucket(Bucket=f"{account.prefix}b{n}")
            account.s3.put_object(Bucket=f"{account.prefix}b{n}", Key="f", Body=b"x" * size)
    with carol.connection() as conn:
        task = conn.create_task("long", "docker-batch")
        task.constants["DOCKER_CMD"] = "sleep 60"
        task.submit()
        deadline = time.monotonic() + 30
        while task.state != "FullyExecuting" and time.monotonic() < deadline:
            time.sleep(0.2)
            task.update(flushcache=True)
        try:
            mine = conn.user_info
            with dave.connection() as other:
                theirs = other.user_info
            official = qarnot.Connection(cluster_url=cluster.url, client_token=carol.token,
                                         storage_url=_storage_url(cluster)).user_info
        finally:
            task.abort()
    assert (mine.task_count, mine.running_task_count, mine.running_instance_count) == (1, 1, 1)
    assert (theirs.task_count, theirs.running_task_count, theirs.running_instance_count) == (
        0, 0, 0)
    assert (mine.bucket_count, mine.used_quota_bytes_bucket) == (2, 2100)
    assert (theirs.bucket_count, theirs.used_quota_bytes_bucket) == (1, 7)
    assert mine.max_task is None and mine.max_bucket is None and mine.max_instances > 0
    assert (official.email, official.task_count, official.running_instance_count,
            official.bucket_count, official.used_quota_bytes_bucket) == (carol.email, 1, 1, 2,
                                                                        2100)
    assert official.max_task is None and official.max_cores > 0


def test_a_user_works_inside_its_prefix(alice, alice_bucket):
    client = alice.s3
    assert client.get_object(Bucket=alice_bucket, Key="secret.txt")["Body"].read() == b"alice only"
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=alice_bucket)["Contents"]]
    assert keys == ["secret.txt"]
    client.put_object(Bucket=alice_bucket, Key="tmp.txt", Body=b"x")
    client.delete_object(Bucket=alice_bucket, Key="tmp.txt")
    assert [b["Name"] for b in client.list_buckets()["Buckets"]] == [alice_bucket]
    refused(lambda: client.create_bucket(Bucket=f"x{alice.prefix}outside"))
    refused(lambda: client.create_bucket(Bucket=alice.prefix.rstrip("-")))  # no trailing dash


def test_another_user_is_denied_everything(alice, alice_bucket, bob):
    client = bob.s3
    refused(lambda: client.get_object(Bucket=alice_bucket, Key="secret.txt"))
    refused(lambda: client.head_object(Bucket=alice_bucket, Key="secret.txt"), "403")
    refused(lambda: client.list_objects_v2(Bucket=alice_bucket))
    refused(lambda: client.put_object(Bucket=alice_bucket, Key="evil.txt", Body=b"x"))
    refused(lambda: client.delete_object(Bucket=alice_bucket, Key="secret.txt"))
    refused(lambda: client.delete_bucket(Bucket=alice_bucket))
    refused(lambda: client.create_bucket(Bucket=f"{alice.prefix}mine-now"))
    refused(lambda: client.create_bucket(Bucket="free-name-for-bob"))
    assert alice_bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    # nothing changed for alice
    got = alice.s3.get_object(Bucket=alice_bucket, Key="secret.txt")["Body"].read()
    assert got == b"alice only"
    keys = [o["Key"] for o in alice.s3.list_objects_v2(Bucket=alice_bucket)["Contents"]]
    assert keys == ["secret.txt"]


def test_a_wrong_secret_or_key_is_refused(alice, alice_bucket):
    refused(lambda: s3(alice.cluster, alice.email, "wrong-" + alice.token).list_buckets(),
            "SignatureDoesNotMatch")
    refused(lambda: s3(alice.cluster, "nobody@example.com", alice.token).list_buckets(),
            "InvalidAccessKeyId")
    anonymous = boto3.session.Session().client(
        "s3", endpoint_url=_storage_url(alice.cluster), region_name="us-east-1",
        config=Config(signature_version=UNSIGNED,
                      retries={"max_attempts": 1}))
    refused(lambda: anonymous.get_object(Bucket=alice_bucket, Key="secret.txt"))


def test_sdk_tasks_and_buckets_are_scoped(alice, alice_bucket, bob, tmp_path):
    with alice.connection() as as_alice, bob.connection() as as_bob:
        task = as_alice.create_task("mine", "docker-batch")
        task.constants["DOCKER_CMD"] = "sh -c 'echo from-alice > out.txt'"
        task.results = as_alice.create_bucket(f"{alice.prefix}results")
        task.run(output_dir=str(tmp_path / "out"), job_timeout=60)
        assert task.state == "Success", task.errors
        assert (tmp_path / "out" / "out.txt").read_text() == "from-alice\n"

        with pytest.raises(MissingTaskException):
            as_bob.retrieve_task(task.uuid)
        assert task.uuid not in [t.uuid for t in as_bob.tasks()]
        with pytest.raises(QComputeError, match=f"must start with '{bob.prefix}'"):
            as_bob.create_bucket(f"{alice.prefix}results")
        with pytest.raises(QComputeError, match=f"must start with '{bob.prefix}'"):
            qcompute.bucket.Bucket(as_bob, alice_bucket, create=False).list_files()
        assert alice_bucket not in [b.name for b in as_bob.buckets()]
        # the server refuses a task naming a bucket outside the prefix, naming the prefix
        stolen = as_bob.create_task("steal", "docker-batch")
        stolen.constants["DOCKER_CMD"] = "true"
        stolen.results = qcompute.bucket.Bucket(as_bob, alice_bucket, create=False)
        with pytest.raises(UnauthorizedException) as caught:
            stolen.submit()
        assert bob.prefix in str(caught.value)


def test_the_owner_uses_free_bucket_names(owner, alice):
    name = f"free-{uuid.uuid4().hex[:8]}"
    bucket = owner.create_bucket(name)
    bucket.add_string("owner data", "a.txt")
    assert bucket.list_files() == ["a.txt"]
    refused(lambda: alice.s3.get_object(Bucket=name, Key="a.txt"))
    bucket.delete()


def test_buckets_with_qarnot_names_keep_their_rights(owner, alice, bob):
    """Upper case and '_' go through the S3 front to be created; who may reach what stays
    SeaweedFS's decision: the owner's bucket is closed to users, alice's prefix to bob."""
    bucket = owner.create_bucket("OwnerScenes_1")
    try:
        bucket.add_string("owner data", "in/a.txt")
        with alice.connection() as as_alice:
            for name in ("OwnerScenes_1", "Alice_Outside"):
                with pytest.raises(QComputeError, match=f"must start with '{alice.prefix}'"):
                    as_alice.create_bucket(name)
            mine = as_alice.create_bucket(f"{alice.prefix}Scenes_In")
            mine.add_string("alice data", "k.txt")
        client = alice.s3
        refused(lambda: client.get_object(Bucket="OwnerScenes_1", Key="in/a.txt"))
        refused(lambda: client.list_objects_v2(Bucket="OwnerScenes_1"))
        refused(lambda: client.put_object(Bucket="OwnerScenes_1", Key="x", Body=b"x"))
        refused(lambda: client.delete_object(Bucket="OwnerScenes_1", Key="in/a.txt"))
        refused(lambda: client.delete_bucket(Bucket="OwnerScenes_1"))
        names = [b["Name"] for b in client.list_buckets()["Buckets"]]
        assert "OwnerScenes_1" not in names and f"{alice.prefix}Scenes_In" in names
        refused(lambda: bob.s3.get_object(Bucket=f"{alice.prefix}Scenes_In", Key="k.txt"))
        refused(lambda: bob.s3.put_object(Bucket=f"{alice.prefix}Scenes_In", Key="x", Body=b""))
        assert bucket.list_files() == ["in/a.txt"]  # nothing changed
        assert client.get_object(Bucket=f"{alice.prefix}Scenes_In",
                                 Key="k.txt")["Body"].read() == b"alice data"
        client.delete_object(Bucket=f"{alice.prefix}Scenes_In", Key="k.txt")
        client.delete_bucket(Bucket=f"{alice.prefix}Scenes_In")
    finally:
        bucket.delete()


def test_rotation_takes_effect_at_once(cluster, add_user):
    carol = add_user("carol")
    bucket = f"{carol.prefix}box"
    carol.s3.create_bucket(Bucket=bucket)
    old = carol.s3
    new_token = token_of(cli(cluster, "rotate", carol.email))
    assert new_token != carol.token
    refused(lambda: old.list_objects_v2(Bucket=bucket), "SignatureDoesNotMatch")
    assert carol.api_status() == 401
    carol.token = new_token
    assert carol.api_status() == 200
    carol.s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert carol.s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_removal_takes_effect_at_once(cluster, add_user, owner):
    dave = add_user("dave")
    bucket = f"{dave.prefix}box"
    dave.s3.create_bucket(Bucket=bucket)
    dave.s3.put_object(Bucket=bucket, Key="k", Body=b"kept")
    with dave.connection() as conn:
        task = conn.create_task("done", "docker-batch")
        task.constants["DOCKER_CMD"] = "echo bye"
        task.run(job_timeout=60)
    assert (cluster.data_dir / "output" / task.uuid).is_dir()
    declined = CliRunner().invoke(main, ["user", "remove", dave.email, "--config",
                                         str(cluster.config)], input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert dave.api_status() == 200
    output = cli(cluster, "remove", dave.email, "--yes")
    assert f"removed {dave.email}" in output and "1 task(s) deleted" in output
    refused(lambda: dave.s3.list_objects_v2(Bucket=bucket), "InvalidAccessKeyId")
    assert dave.api_status() == 401
    assert not (cluster.data_dir / "output" / task.uuid).exists()  # the task is gone
    # the buckets stay, for the owner; a new account with the same e-mail gets a new prefix
    assert owner.s3client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"kept"
    again = Account(cluster, owner._http.post("/admin/users", json={"email": dave.email}))
    assert again.prefix != dave.prefix
    refused(lambda: again.s3.get_object(Bucket=bucket, Key="k"))
    owner.s3client.delete_object(Bucket=bucket, Key="k")
    owner.s3client.delete_bucket(Bucket=bucket)


# -- runners and exported credentials: the task owner's identity ------------------------------

BOTO_IN_TASK = """
import os, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
print("as", os.environ["AWS_ACCESS_KEY_ID"])
try:
    s3.get_object(Bucket=os.environ["OTHER"], Key="secret.txt")
    print("read the other user's bucket")
except ClientError as exc:
    print("other:", exc.response["Error"]["Code"])
s3.put_object(Bucket=os.environ["OWN"], Key="from-task.txt", Body=b"written by the task")
print("own: written")
"""


def test_exported_credentials_are_the_owners_own_keys(alice_bucket, bob):
    own = f"{bob.prefix}exported"
    bob.s3.create_bucket(Bucket=own)
    with bob.connection() as conn:
        task = conn.create_task("credentials", "docker-batch")
        task.allow_credentials_to_be_exported_to_task_environment()
        task.constants.update({"OTHER": alice_bucket, "OWN": own, "DOCKER_CMD": (
            f"{shlex.quote(sys.executable)} -c {shlex.quote(BOTO_IN_TASK)}")})
        task.run(job_timeout=60)
        assert task.state == "Success", (task.errors, task.stderr())
        assert task.stdout() == f"as {bob.email}\nother: AccessDenied\nown: written\n"
    got = bob.s3.get_object(Bucket=own, Key="from-task.txt")["Body"].read()
    assert got == b"written by the task"


def _post(account, path: str, doc: dict) -> str:
    response = requests.post(f"{account.cluster.url}{path}", json=doc, timeout=30,
                             headers={"Authorization": account.token})
    assert response.status_code == 201, response.text
    return response.json()["uuid"]


def test_runners_fetch_resources_as_the_tasks_owner(cluster, alice_bucket, bob):
    """Were the check at submit bypassed, B's runner still cannot read A's bucket."""
    own = f"{bob.prefix}resources"
    bob.s3.create_bucket(Bucket=own)
    job = _post(bob, "/jobs", {"name": "held", "useDependencies": True})
    parent = _post(bob, "/tasks", {"name": "hold", "profile": "docker-batch", "jobUuid": job,
                                   "constants": [{"key": "DOCKER_CMD", "value": "sleep 300"}]})
    child = _post(bob, "/tasks", {
        "name": "steal", "profile": "docker-batch", "jobUuid": job, "resourceBuckets": [own],
        "dependencies": {"advancedDependsOn": [{"taskUuid": parent}]},
        "constants": [{"key": "DOCKER_CMD", "value": "cat secret.txt"}]})
    with sqlite3.connect(cluster.data_dir / "qcompute.db", timeout=30) as db:
        (text,) = db.execute("SELECT document FROM tasks WHERE uuid = ?", (child,)).fetchone()
        db.execute("UPDATE tasks SET document = ? WHERE uuid = ?",
                   (json.dumps({**json.loads(text), "resourceBuckets": [alice_bucket]}), child))
    with bob.connection() as conn:
        conn.retrieve_task(parent).abort()  # any final state releases the child
        task = conn.retrieve_task(child)
        task.wait(timeout=90)
        assert task.state == "Failure"
        assert "alice only" not in task.stdout()
        message = " ".join(e.message for e in task.errors)
    assert f"s3://{alice_bucket}/" in message and "AccessDenied" in message, message


def test_the_data_dir_is_private(cluster, owner):
    task = owner.create_task("modes", "docker-batch")
    task.constants["DOCKER_CMD"] = "echo private"
    task.run(job_timeout=60)
    data = cluster.data_dir
    assert data.stat().st_mode & 0o777 == 0o700
    for path in (data / "qcompute.db", data / "secrets.key", data / "qcompute.conf",
                 *(data / "output" / task.uuid).iterdir()):
        assert path.stat().st_mode & 0o077 == 0, path  # made under the server's umask 077


SNOOP = r"""
import json, os, socket, subprocess, sys
data, other = sys.argv[1], sys.argv[2]
ports = json.loads(sys.argv[3])
for path in (f"{data}/qcompute.db", f"{data}/s3-admin.json", f"{data}/secrets.key",
             f"{data}/s3/s3.json", other, "/proc/1/root/etc/shadow"):
    try:
        print(path, "READ", open(path, "rb").read(20))
    except OSError as exc:
        print(path, type(exc).__name__)
print("env", sorted(k for k in os.environ if k.startswith(("QCOMPUTE_SERVER", "PYTEST"))))
print("ps", sorted(p for p in os.listdir("/proc") if p.isdigit()) == ["1", "2"] or
      sorted(open(f"/proc/{p}/comm").read().strip() for p in os.listdir("/proc") if p.isdigit()))
for name, port in sorted(ports.items()):
    try:
        socket.create_connection(("127.0.0.1", port), 2).close()
        print(name, "reachable")
    except OSError as exc:
        print(name, type(exc).__name__)
for path in ("/etc/evil", "/usr/evil", "/evil", "/job/ok", "/tmp/ok"):
    try:
        open(path, "w").close()
        print(path, "written")
    except OSError as exc:
        print(path, type(exc).__name__)
"""


def test_a_task_sees_nothing_of_the_server_nor_of_other_users(cluster, alice, bob):
    """Probed from B's task while A's runs: the data dir, the S3 admin identity, the server's
    environment, A's working directory and processes, the storage's internal ports."""
    with alice.connection() as conn:
        running = conn.create_task("alice-running", "docker-batch")
        running.constants["DOCKER_CMD"] = "sh -c 'echo alice-data > mine.txt; sleep 60'"
        running.submit()
        deadline = time.monotonic() + 30
        while not (found := list((cluster.data_dir / "work").glob(f"{running.uuid}/*/job/*"))):
            assert time.monotonic() < deadline, "alice's task never wrote its file"
            time.sleep(0.05)
        other = found[0]
        weed = json.loads((cluster.data_dir / "s3" / "ports.json").read_text())
        ports = {**{f"weed-{k}": v for k, v in weed.items()},
                 "api": int(cluster.url.rsplit(":", 1)[1]),
                 "s3": int(_storage_url(cluster).rsplit(":", 1)[1])}
        with bob.connection() as bconn:
            task = bconn.create_task("snoop", "docker-batch")
            task.constants["DOCKER_CMD"] = " ".join(shlex.quote(a) for a in (
                sys.executable, "-c", SNOOP, str(cluster.data_dir), str(other),
                json.dumps(ports)))
            task.run(job_timeout=60)
            out = task.stdout()
        running.abort()
    assert task.state == "Success", (task.errors, task.stderr())
    assert "READ" not in out, out
    assert "env []" in out and "ps True" in out, out
    for name in weed:
        assert f"weed-{name} ConnectionRefusedError" in out, out
    assert "api reachable" in out and "s3 reachable" in out, out
    for path in ("/etc/evil", "/usr/evil", "/evil"):
        assert f"{path} OSError" in out, out
    assert "/job/ok written" in out and "/tmp/ok written" in out, out
