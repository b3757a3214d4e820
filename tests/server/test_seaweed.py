"""The embedded S3 storage against a real `weed mini`: identities, restarts, start-up errors,
bucket names and the move of an old data dir's buckets."""
from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import uuid

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from qcompute.server.executors.base import S3Access
from qcompute.server.settings import ServerSettings
from qcompute.server.storage import EmbeddedStorage, make_storage
from qcompute.server.storage.seaweed import BUCKETS_FOLDER, SeaweedError, SeaweedFS
from tests.helpers import free_port, s3_client


def error_code(call) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"]


def test_admin_identity_only_no_anonymous_access(seaweed):
    import requests

    assert seaweed.pid and seaweed.is_running()
    response = requests.put(f"{seaweed.endpoint_url}/anon-bucket-qc", timeout=5)
    assert response.status_code == 403
    assert error_code(lambda: s3_client(seaweed, "nobody", "nothing").list_buckets()) \
        == "InvalidAccessKeyId"


def test_owner_identity_reaches_every_bucket(seaweed, s3_admin):
    email = f"owner-{uuid.uuid4().hex[:6]}@example.com"
    seaweed.configure_identity(email, email, "owner-token", bucket_prefix=None)
    owner = s3_client(seaweed, email, "owner-token")
    bucket = f"anything-{uuid.uuid4().hex[:6]}"
    owner.create_bucket(Bucket=bucket)
    owner.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert s3_admin.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_prefixed_user_is_confined_to_its_buckets(seaweed, s3_admin):
    tag = uuid.uuid4().hex[:6]
    email, prefix = f"alice.{tag}+x@example.com", f"alice{tag}-"
    seaweed.configure_identity(email, email, "tok-1", bucket_prefix=prefix)
    alice = s3_client(seaweed, email, "tok-1")
    alice.create_bucket(Bucket=f"{prefix}data")
    alice.put_object(Bucket=f"{prefix}data", Key="k", Body=b"mine")
    assert alice.get_object(Bucket=f"{prefix}data", Key="k")["Body"].read() == b"mine"
    assert [b["Name"] for b in alice.list_buckets()["Buckets"]] == [f"{prefix}data"]

    other = f"other-{tag}"
    s3_admin.create_bucket(Bucket=other)
    s3_admin.put_object(Bucket=other, Key="k", Body=b"theirs")
    assert error_code(lambda: alice.get_object(Bucket=other, Key="k")) == "AccessDenied"
    assert error_code(lambda: alice.put_object(Bucket=other, Key="x", Body=b"")) == "AccessDenied"
    assert error_code(lambda: alice.create_bucket(Bucket=f"bob{tag}-x")) == "AccessDenied"

    wrong = s3_client(seaweed, email, "wrong-token")
    assert error_code(wrong.list_buckets) == "SignatureDoesNotMatch"

    # configuring again replaces the identity: the old secret stops working
    seaweed.configure_identity(email, email, "tok-2", bucket_prefix=prefix)
    assert error_code(alice.list_buckets) == "SignatureDoesNotMatch"
    renewed = s3_client(seaweed, email, "tok-2")
    assert renewed.get_object(Bucket=f"{prefix}data", Key="k")["Body"].read() == b"mine"

    seaweed.delete_identity(email)
    assert error_code(renewed.list_buckets) == "InvalidAccessKeyId"
    seaweed.delete_identity(email)  # unknown names are fine


@pytest.mark.parametrize("args, message", [
    (("bad name", "k", "s", None), "identity name"),
    (("n", "k", "s e c", None), "secret key"),
    (("n", "k", "s", "Bad_Prefix"), "bucket prefix"),
    (("n", "k", "s", ""), "bucket prefix"),
])
def test_identity_values_are_validated(seaweed, args, message):
    with pytest.raises(ValueError, match=message):
        seaweed.configure_identity(*args)


def test_s3_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        weed = SeaweedFS(tmp_path, port, "admin", "secret")
        with pytest.raises(SeaweedError, match=f"S3 port {port}"):
            weed.start()
    assert weed.pid is None


def test_embedded_storage_keys_identities_and_data_survive_restart(tmp_path):
    settings = ServerSettings(data_dir=tmp_path, s3_port=free_port())
    storage = make_storage(settings)
    assert isinstance(storage, EmbeddedStorage)
    storage.start()
    try:
        admin = storage.admin_access
        keys_file = tmp_path / "s3-admin.json"
        assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
        assert admin.endpoint_url == storage.endpoint_url == f"http://127.0.0.1:{settings.s3_port}"
        storage.provision_user("carol@example.com", "carol-token", "carol-")
        storage.provision_user("gone@example.com", "gone-token", "gone-")
        storage.remove_user("gone@example.com")
        carol = s3_client(storage.seaweed, "carol@example.com", "carol-token")
        carol.create_bucket(Bucket="carol-keep")
        carol.put_object(Bucket="carol-keep", Key="k", Body=b"kept")
        first_pid, ports = storage.seaweed.pid, dict(storage.seaweed.ports)
    finally:
        storage.stop()
    assert not storage.is_running()

    again = EmbeddedStorage(settings)
    again.start()
    try:
        assert again.admin_access == admin  # the generated keys were kept
        assert again.seaweed.pid != first_pid and again.seaweed.ports == ports
        carol = s3_client(again.seaweed, "carol@example.com", "carol-token")
        assert carol.get_object(Bucket="carol-keep", Key="k")["Body"].read() == b"kept"
        gone = s3_client(again.seaweed, "gone@example.com", "gone-token")
        assert error_code(gone.list_buckets) == "InvalidAccessKeyId"
    finally:
        again.stop()


def test_runners_get_the_owners_keys(tmp_path):
    embedded = EmbeddedStorage(ServerSettings(data_dir=tmp_path, s3_port=18999,
                                              s3_region="eu-west-3"))
    assert embedded.owner_access("ann@x.org", "tok") == S3Access(
        "http://127.0.0.1:18999", "ann@x.org", "tok", "eu-west-3")
    assert embedded.user_keys("ann@x.org", None) is None  # the convention: e-mail, token


def test_half_given_admin_keys_are_refused(tmp_path):
    storage = EmbeddedStorage(ServerSettings(data_dir=tmp_path, s3_admin_access_key="only"))
    with pytest.raises(ValueError, match="both"):
        storage.start()


# ----------------------------------------------------------------------------- bucket names
def test_qarnot_bucket_names_work_once_made(seaweed, s3_admin):
    """SeaweedFS's CreateBucket refuses upper case and '_'; a bucket made by make_bucket (in
    /qbuckets, where the filer takes such names) then works like any other, nested keys too."""
    tag = uuid.uuid4().hex[:6]
    email, prefix = f"dora.{tag}@example.com", f"dora{tag}-"
    seaweed.configure_identity(email, email, "tok", bucket_prefix=prefix)
    dora = s3_client(seaweed, email, "tok")
    name = f"{prefix}Meshroom_In"
    assert error_code(lambda: dora.create_bucket(Bucket=name)) == "InvalidBucketName"
    assert seaweed.make_bucket(name) is True
    assert seaweed.make_bucket(name) is False  # already there
    assert stat.S_IMODE((seaweed.data_dir / "filer.toml").stat().st_mode) == 0o600

    dora.put_object(Bucket=name, Key="in/scene/a.txt", Body=b"a")
    dora.put_object(Bucket=name, Key="top.txt", Body=b"t")
    dora.copy_object(Bucket=name, Key="in/b.txt", CopySource={"Bucket": name, "Key": "top.txt"})
    listed = dora.list_objects_v2(Bucket=name)["Contents"]
    assert [o["Key"] for o in listed] == ["in/b.txt", "in/scene/a.txt", "top.txt"]
    assert dora.get_object(Bucket=name, Key="in/scene/a.txt")["Body"].read() == b"a"
    assert [b["Name"] for b in dora.list_buckets()["Buckets"]] == [name]
    other = f"Other{tag}_x"
    seaweed.make_bucket(other)
    assert error_code(lambda: dora.put_object(Bucket=other, Key="k", Body=b"")) == "AccessDenied"
    dora.delete_objects(Bucket=name, Delete={"Objects": [{"Key": o["Key"]} for o in listed]})
    dora.delete_bucket(Bucket=name)
    assert error_code(lambda: s3_admin.head_bucket(Bucket=name)) == "404"
    with pytest.raises(ValueError, match="not a valid bucket name"):
        seaweed.make_bucket("a/b")


class OldSeaweedFS(SeaweedFS):
    """SeaweedFS as qcompute started it before buckets moved: weed's default folder, /buckets
    (the store stays the one ``mini`` picks without a filer.toml: an empty one is refused)."""

    folder = ""

    def _filer_toml(self) -> str:
        return super()._filer_toml().replace(f'"{BUCKETS_FOLDER}"', f'"{self.folder}"'
                                             if self.folder else '"/buckets"')

    def _move_legacy_buckets(self, timeout: float) -> None:
        pass


class CutShort(OldSeaweedFS):
    """Buckets in neither folder, to stage a move stopped half-way (the filer refuses moves
    in and out of the buckets folder)."""

    folder = "/elsewhere"


def test_buckets_of_an_old_data_dir_are_moved_at_start(tmp_path):
    port, secret = free_port(), "admin-secret"
    old = OldSeaweedFS(tmp_path, port, "admin", secret)
    old.start()
    try:
        old.configure_identity("erin@example.com", "erin@example.com", "tok", "erin-")
        erin = s3_client(old, "erin@example.com", "tok")
        erin.create_bucket(Bucket="erin-data")
        erin.put_object(Bucket="erin-data", Key="a/b/c.txt", Body=b"abc")
        big = os.urandom(6 * 1024 * 1024)  # two parts
        erin.upload_fileobj(io.BytesIO(big), "erin-data", "big.bin", Config=TransferConfig(
            multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
        s3_client(old).put_object(Bucket="shared", Key="k", Body=b"v")  # made by the upload
        assert {"erin-data", "shared"} <= set(old._folders("/buckets"))
    finally:
        old.stop()
    # a move cut short: the store copied (as start does), "a/" moved, then the server killed
    shutil.copytree(tmp_path / "filerldb2", tmp_path / "copy")
    cut = CutShort(tmp_path, port, "admin", secret)
    cut.start()
    try:
        cut._shell(["fs.mkdir /qbuckets/erin-data", "fs.mv /buckets/erin-data/a /qbuckets/erin-data"],
                   what="a move cut short")
        assert cut._folders("/qbuckets/erin-data") == ["a"]  # fs.mv cannot finish this one
    finally:
        cut.stop()
    (tmp_path / "copy").rename(tmp_path / "filerldb2.before-move")

    new = SeaweedFS(tmp_path, port, "admin", secret)
    for _ in range(2):  # the first start moves the buckets, the second finds nothing to move
        new.start()
        try:
            assert not (tmp_path / "filerldb2.before-move").exists()
            assert not [n for n in new._folders("/buckets") if not n.startswith(".")]
            assert {"erin-data", "shared"} <= set(new._folders(BUCKETS_FOLDER))
            erin = s3_client(new, "erin@example.com", "tok")
            assert [b["Name"] for b in erin.list_buckets()["Buckets"]] == ["erin-data"]
            assert [o["Key"] for o in erin.list_objects_v2(Bucket="erin-data")["Contents"]] == [
                "a/b/c.txt", "big.bin"]
            assert erin.get_object(Bucket="erin-data", Key="a/b/c.txt")["Body"].read() == b"abc"
            assert erin.get_object(Bucket="erin-data", Key="big.bin")["Body"].read() == big
            assert error_code(lambda: erin.create_bucket(Bucket="erin-data")) \
                == "BucketAlreadyOwnedByYou"  # its owner was kept
            assert s3_client(new).get_object(Bucket="shared", Key="k")["Body"].read() == b"v"
        finally:
            new.stop()
