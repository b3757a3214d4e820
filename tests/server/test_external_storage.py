"""``storage = external``: users' keys from the store's IAM API or from the operator's file,
against a SeaweedFS cluster of separate processes (the ``external_s3`` fixture)."""
from __future__ import annotations

import json
import uuid

import pytest
from botocore.exceptions import ClientError
from cryptography.fernet import Fernet

from qcompute.server.bootstrap import ensure_storage_keys
from qcompute.server.crypto import Sealer
from qcompute.server.db.session import make_engine, make_session_factory, migrate
from qcompute.server.executors.base import S3Access
from qcompute.server.services.users import create_user, find_user, storage_keys
from qcompute.server.settings import ServerSettings
from qcompute.server.storage import make_storage
from qcompute.server.storage.external import (ExternalStorage, NoStorageKeys, bucket_policy,
                                              iam_user_name)


def _settings(tmp_path, store, **more) -> ServerSettings:
    return ServerSettings(data_dir=tmp_path, storage="external", s3_url=store.url,
                          s3_admin_access_key=store.admin_key,
                          s3_admin_secret_key=store.admin_secret, **more)


def _code(call) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


def test_settings_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="s3_url .*s3_admin_access_key .*s3_admin_secret_key"):
        make_storage(ServerSettings(data_dir=tmp_path, storage="external"))
    with pytest.raises(ValueError, match="s3_keys_file"):
        ExternalStorage(ServerSettings(data_dir=tmp_path, storage="external", s3_url="http://s",
                                       s3_admin_access_key="a", s3_admin_secret_key="b",
                                       s3_user_keys="file"))


def test_iam_user_names_and_policy():
    assert iam_user_name("ann@x.org") == "qcompute-ann@x.org"
    odd = iam_user_name("t~ilde@x.org")  # '~' is no IAM name character
    assert odd.startswith("qcompute-") and len(odd) == 41 and odd != iam_user_name("u~@x.org")
    policy = json.loads(bucket_policy("ann-1-"))["Statement"][0]
    assert policy["Resource"] == ["arn:aws:s3:::ann-1-*", "arn:aws:s3:::ann-1-*/*"]
    assert json.loads(bucket_policy(None))["Statement"][0]["Resource"][0] == "arn:aws:s3:::*"


def test_iam_keys_reach_only_the_users_prefix(tmp_path, external_s3):
    storage = make_storage(_settings(tmp_path, external_s3))
    storage.start()
    assert storage.check() is None and storage.issues_keys
    assert storage.describe() == (f"external S3 at {external_s3.url} "
                                  f"(users' keys from IAM at {external_s3.url})")
    tag = uuid.uuid4().hex[:6]
    ann, bob = f"ann{tag}@x.org", f"bob{tag}@x.org"
    ann_keys = storage.provision_user(ann, "ann-token", f"ann{tag}-1-")
    bob_keys = storage.provision_user(bob, "bob-token", f"bob{tag}-2-")
    assert ann_keys[1] != "ann-token"  # the store's own pair, not (e-mail, token)
    assert storage.owner_access(ann, "ann-token", ann_keys) == S3Access(
        external_s3.url, *ann_keys)
    ann_s3 = external_s3.client("s3", *ann_keys)
    bob_s3 = external_s3.client("s3", *bob_keys)
    ann_s3.create_bucket(Bucket=f"ann{tag}-1-data")
    ann_s3.put_object(Bucket=f"ann{tag}-1-data", Key="k", Body=b"ann's")
    bob_s3.create_bucket(Bucket=f"bob{tag}-2-data")
    bob_s3.put_object(Bucket=f"bob{tag}-2-data", Key="k", Body=b"bob's")
    assert ann_s3.get_object(Bucket=f"ann{tag}-1-data", Key="k")["Body"].read() == b"ann's"
    for call in (lambda: ann_s3.get_object(Bucket=f"bob{tag}-2-data", Key="k"),
                 lambda: ann_s3.put_object(Bucket=f"bob{tag}-2-data", Key="x", Body=b"x"),
                 lambda: ann_s3.list_objects_v2(Bucket=f"bob{tag}-2-data"),
                 lambda: ann_s3.delete_object(Bucket=f"bob{tag}-2-data", Key="k"),
                 lambda: ann_s3.create_bucket(Bucket=f"bob{tag}-2-mine"),
                 lambda: ann_s3.create_bucket(Bucket=f"ann{tag}-9-not-mine")):
        assert _code(call) == "AccessDenied"
    assert [b["Name"] for b in ann_s3.list_buckets()["Buckets"]] == [f"ann{tag}-1-data"]
    # provisioned again (a token rotation): a new pair, the old one refused at once
    new_keys = storage.provision_user(ann, "ann-token-2", f"ann{tag}-1-")
    assert new_keys[0] != ann_keys[0]
    assert _code(lambda: ann_s3.list_objects_v2(Bucket=f"ann{tag}-1-data")) == \
        "InvalidAccessKeyId"
    assert external_s3.client("s3", *new_keys).list_objects_v2(
        Bucket=f"ann{tag}-1-data")["KeyCount"] == 1
    # ensure_user at start: a user that has keys keeps them
    assert storage.ensure_user(ann, "", f"ann{tag}-1-", new_keys) is None
    # removed: keys revoked, IAM user gone; removing again is fine
    storage.remove_user(ann)
    storage.remove_user(ann)
    assert _code(lambda: external_s3.client("s3", *new_keys).list_buckets()) == \
        "InvalidAccessKeyId"
    iam = external_s3.client("iam")
    assert _code(lambda: iam.get_user(UserName=iam_user_name(ann))) == "NoSuchEntity"
    # the owner (no prefix) reaches every bucket
    owner_keys = storage.provision_user(f"own{tag}@x.org", "t", None)
    owner_s3 = external_s3.client("s3", *owner_keys)
    assert owner_s3.get_object(Bucket=f"bob{tag}-2-data", Key="k")["Body"].read() == b"bob's"
    storage.remove_user(f"own{tag}@x.org")
    storage.remove_user(bob)
    with pytest.raises(NoStorageKeys, match="none was issued"):
        storage.owner_access(bob, "t", None)


def test_operator_key_file(tmp_path, external_s3):
    """The operator makes and scopes the pairs (here with the store's IAM, by hand) and lists
    them; the server reads the file again when it changes."""
    tag = uuid.uuid4().hex[:6]
    iam = external_s3.client("iam")
    name = f"operator-made-{tag}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=bucket_policy(f"cy{tag}-"))
    made = iam.create_access_key(UserName=name)["AccessKey"]
    pair = (made["AccessKeyId"], made["SecretAccessKey"])
    keys_file = tmp_path / "s3-keys.json"
    keys_file.write_text("{}")
    storage = make_storage(_settings(tmp_path, external_s3, s3_user_keys="file",
                                     s3_keys_file=str(keys_file)))
    assert not storage.issues_keys and str(keys_file) in storage.describe()
    cy = f"cy{tag}@x.org"
    assert storage.provision_user(cy, "tok", f"cy{tag}-") is None  # logged for the operator
    with pytest.raises(NoStorageKeys, match="has no entry"):
        storage.owner_access(cy, "tok")
    keys_file.write_text(json.dumps({cy: {"accessKey": pair[0], "secretKey": pair[1]}}))
    access = storage.owner_access(cy, "tok")
    assert (access.access_key, access.secret_key) == pair == storage.user_keys(cy, None)
    s3 = external_s3.client("s3", *pair)
    s3.create_bucket(Bucket=f"cy{tag}-in")
    assert _code(lambda: s3.create_bucket(Bucket=f"other{tag}-in")) == "AccessDenied"
    storage.remove_user(cy)  # the operator's job: the pair still works until they revoke it
    assert s3.list_objects_v2(Bucket=f"cy{tag}-in")["KeyCount"] == 0
    keys_file.write_text(json.dumps({cy: {"accessKey": pair[0]}}))
    with pytest.raises(ValueError, match="accessKey and secretKey"):
        storage.owner_access(cy, "tok")
    keys_file.write_text("not json")
    with pytest.raises(ValueError, match="cannot read the S3 keys file"):
        storage.user_keys(cy, None)


def test_users_without_keys_get_theirs_at_start_once(tmp_path, external_s3):
    """A cluster moved to an IAM store: at start, each user without a pair gets one (kept
    sealed); a user who has one keeps it; the embedded store issues none."""
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    sealer = Sealer(Fernet.generate_key())
    migrate(engine, sealer)
    sessions = make_session_factory(engine, sealer)
    tag = uuid.uuid4().hex[:6]
    with sessions() as session:
        user, _ = create_user(session, f"eve{tag}@x.org")
        prefix = user.bucket_prefix
        session.commit()
    ensure_storage_keys(sessions, make_storage(ServerSettings(data_dir=tmp_path)))  # embedded
    with sessions() as session:
        assert storage_keys(session, find_user(session, f"eve{tag}@x.org")) is None
    storage = make_storage(_settings(tmp_path, external_s3))
    ensure_storage_keys(sessions, storage)
    with sessions() as session:
        user = find_user(session, f"eve{tag}@x.org")
        first = storage_keys(session, user)
        assert user.sealed_s3_secret != first[1]  # sealed at rest
    s3 = external_s3.client("s3", *first)
    s3.create_bucket(Bucket=f"{prefix}kept")
    assert _code(lambda: s3.create_bucket(Bucket=f"x{prefix}")) == "AccessDenied"
    ensure_storage_keys(sessions, storage)  # again: nothing new
    with sessions() as session:
        assert storage_keys(session, find_user(session, f"eve{tag}@x.org")) == first
    storage.remove_user(f"eve{tag}@x.org")
    engine.dispose()
