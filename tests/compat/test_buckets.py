"""The official SDK's bucket calls on the cluster's storage (through the S3 front), bucket names
of Qarnot's samples (``meshroomIn``) included."""
from __future__ import annotations

import os

import pytest
import qarnot
from botocore.exceptions import ClientError
from qarnot.exceptions import QarnotGenericException

from .helpers import S3Calls


def _tree(root) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_create_existing_bucket_is_fine(qconn, bucket_name):
    """create_bucket / retrieve_or_create_bucket send CreateBucket each time, also for a bucket
    the user owns: a 200 on Qarnot, and so here (see s3front.py)."""
    name = bucket_name("twice")
    bucket = qconn.create_bucket(name)
    try:
        with S3Calls(qconn) as s3:
            assert qconn.create_bucket(name).uuid == name
            assert qconn.retrieve_or_create_bucket(name).uuid == name
            assert qconn.retrieve_bucket(name).uuid == name  # HeadBucket
        assert s3.operations == ["CreateBucket", "CreateBucket", "HeadBucket"]
    finally:
        bucket.delete()


def test_bucket_of_another_user_is_refused(qconn):
    """The front changes no rights: CreateBucket outside the user's namespace stays a 403."""
    with pytest.raises(ClientError) as caught:
        qconn.create_bucket("someone-else-entirely")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"


def test_sync_round_trip(qconn, bucket_name, tmp_path):
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("alpha\n")
    (local / "sub" / "b.txt").write_text("beta\n")
    (local / "sub" / "copy-of-a.txt").write_text("alpha\n")  # same content: a server-side copy
    (local / "empty").write_bytes(b"")
    (local / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # > 8 MiB: multipart
    bucket = qconn.create_bucket(bucket_name("sync"))

    bucket.sync_directory(str(local))
    with S3Calls(qconn) as s3:
        bucket.sync_directory(str(local))  # nothing changed: multipart ETags match
    assert s3.operations == ["ListObjects", "ListObjects"]

    bucket.add_file(str(local / "a.txt"), "extra/a.txt")
    bucket.add_string("from a string", "extra/string.txt")
    bucket.add_string("", "extra/empty.txt")  # Expect: 100-continue on an empty body
    keys = sorted(obj.key for obj in bucket.list_files())
    assert keys == ["a.txt", "big.bin", "empty", "extra/a.txt", "extra/empty.txt",
                    "extra/string.txt", "sub/b.txt", "sub/copy-of-a.txt"]

    bucket.delete_file("extra/empty.txt")
    assert "extra/empty.txt" not in [obj.key for obj in bucket.list_files()]

    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    expected = {**_tree(local), "extra/a.txt": b"alpha\n", "extra/string.txt": b"from a string"}
    assert _tree(out) == expected
    bucket.get_file("sub/b.txt", str(tmp_path / "b.txt"))
    assert (tmp_path / "b.txt").read_text() == "beta\n"
    assert bucket.uuid in [b.uuid for b in qconn.buckets()]

    with S3Calls(qconn) as s3:
        bucket.delete()
    # The SDK checks versioning (it compares with the string 'None', so it always takes the
    # versioned branch), lists versions, deletes them in one DeleteObjects signed with CRC32.
    assert s3.operations[:2] == ["GetBucketVersioning", "ListObjectVersions"]
    assert s3.operations[-1] == "DeleteBucket"
    deletes = s3.headers("DeleteObjects")
    assert deletes and all("x-amz-checksum-crc32" in headers for headers in deletes)
    assert bucket.uuid not in [b.uuid for b in qconn.buckets()]


@pytest.mark.parametrize("label", ["meshroomIn", "autodock_vina-demo-input"])
def test_bucket_names_of_qarnot_samples(qconn, compat_user, tmp_path, label):
    """Upper case and '_' (SeaweedFS's CreateBucket refuses them): the front creates the bucket;
    every other call goes as usual."""
    name = compat_user["bucketPrefix"] + label
    bucket = qconn.create_bucket(name)
    assert qconn.create_bucket(name).uuid == name  # ours already: a 200, as on Qarnot
    assert qconn.retrieve_or_create_bucket(name).uuid == name
    local = tmp_path / "local"
    (local / "scene").mkdir(parents=True)
    (local / "scene" / "a.obj").write_text("vertices")
    (local / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))
    bucket.sync_directory(str(local))
    bucket.add_string("notes", "docs/notes.txt")
    assert sorted(obj.key for obj in bucket.list_files()) == ["big.bin", "docs/notes.txt",
                                                             "scene/a.obj"]
    assert name in [b.uuid for b in qconn.buckets()]
    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    assert _tree(out) == {**_tree(local), "docs/notes.txt": b"notes"}
    bucket.delete()
    assert name not in [b.uuid for b in qconn.buckets()]


@pytest.mark.parametrize("name, reason", [
    ("bk", "it has 2 characters"), ("a..b", "it must not contain '..'"),
    ("-x-", "it must start and end with a letter or a digit")])
def test_names_qarnot_refuses_get_a_clear_error(cluster, name, reason):
    """As the owner (no prefix: SeaweedFS checks rights before names)."""
    owner = qarnot.Connection(fileconf=str(cluster.config))
    with pytest.raises(ClientError) as caught:
        owner.create_bucket(name)
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidBucketName"
    assert error["Message"] == f"'{name}' is not a valid bucket name: " + reason + (
        ", a bucket name has 3 to 63" if name == "bk" else "")
    task = owner.create_task("bad bucket", "docker-batch", 1)
    task.constants["DOCKER_CMD"] = "true"
    task.results = qarnot.bucket.Bucket(owner, name, create=False)
    with pytest.raises(QarnotGenericException, match=f"resultBucket: '{name}' is not a valid"):
        task.submit()


def test_another_user_cannot_create_a_qarnot_name_outside_its_prefix(qconn):
    with pytest.raises(ClientError) as caught:
        qconn.create_bucket("Someone_Else")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
