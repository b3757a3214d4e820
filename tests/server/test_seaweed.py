"""The embedded S3 storage against a real `weed mini`: identities, restarts, start-up errors."""
from __future__ import annotations

import socket
import stat
import uuid

import pytest
from botocore.exceptions import ClientError

from qcompute.server.executors.base import S3Access
from qcompute.server.settings import ServerSettings
from qcompute.server.storage import (EmbeddedStorage, ExternalStorage, make_storage)
from qcompute.server.storage.seaweed import SeaweedError, SeaweedFS
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


def test_external_storage_uses_the_given_endpoint(tmp_path):
    with pytest.raises(ValueError, match="s3_url"):
        ExternalStorage(ServerSettings(data_dir=tmp_path, storage="external"))
    settings = ServerSettings(data_dir=tmp_path, storage="external", s3_url="http://s3.example",
                              s3_admin_access_key="AK", s3_admin_secret_key="SK")
    storage = make_storage(settings)
    storage.start()
    storage.provision_user("dave@example.com", "t", "dave-")  # the operator's job: a no-op
    assert storage.is_running() and storage.endpoint_url == "http://s3.example"
    assert storage.admin_access == S3Access("http://s3.example", "AK", "SK")
    storage.stop()


def test_runners_get_the_owners_keys_except_on_an_external_s3(tmp_path, caplog):
    embedded = EmbeddedStorage(ServerSettings(data_dir=tmp_path, s3_port=18999,
                                              s3_region="eu-west-3"))
    assert embedded.owner_access("ann@x.org", "tok") == S3Access(
        "http://127.0.0.1:18999", "ann@x.org", "tok", "eu-west-3")
    external = ExternalStorage(ServerSettings(
        data_dir=tmp_path, storage="external", s3_url="http://s3.example",
        s3_admin_access_key="AK", s3_admin_secret_key="SK"))
    for email in ("ann@x.org", "bob@x.org"):  # no per-user keys there yet: warned, once
        assert external.owner_access(email, "tok") == S3Access("http://s3.example", "AK", "SK")
    warnings = [r for r in caplog.records if "admin keys" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_half_given_admin_keys_are_refused(tmp_path):
    storage = EmbeddedStorage(ServerSettings(data_dir=tmp_path, s3_admin_access_key="only"))
    with pytest.raises(ValueError, match="both"):
        storage.start()
