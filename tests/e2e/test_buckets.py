"""Buckets against the real SeaweedFS of the embedded cluster, through the SDK."""
from __future__ import annotations

import os

import pytest

import qcompute


@pytest.fixture
def bucket(conn, request):
    name = f"e2e-{request.node.name.replace('_', '-')}"[:63].lower()
    created = conn.create_bucket(name)
    yield created
    created.delete()


def _transfers(calls: list) -> set[str]:
    return {name for _read, _total, name in calls}


def test_sync_directory_round_trip(conn, bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    (src / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # multipart (8 MiB parts)
    calls: list = []
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert sorted(bucket.list_files()) == ["a.txt", "big.bin", "sub/b.txt"]
    assert _transfers(calls) == {"a.txt", "big.bin", "sub/b.txt"}

    calls.clear()
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert calls == [], "an unchanged directory must transfer nothing (multipart ETags match)"

    (src / "a.txt").write_text("ALPHA!")
    (src / "sub" / "b.txt").unlink()
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert _transfers(calls) == {"a.txt"}
    assert sorted(bucket.list_files()) == ["a.txt", "big.bin"]

    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    assert (out / "a.txt").read_text() == "ALPHA!"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def test_files_strings_and_prefixes(conn, bucket, tmp_path):
    local = tmp_path / "x.txt"
    local.write_text("from a file")
    bucket["docs/x.txt"] = str(local)
    bucket.add_string("hello", "docs\\notes\\y.txt")  # Windows separators become POSIX keys
    assert sorted(bucket.directory("docs/")) == ["docs/notes/y.txt", "docs/x.txt"]
    target = bucket.get_file("docs/notes/y.txt", str(tmp_path / "y.txt"))
    assert open(target).read() == "hello"
    bucket.delete_file("docs/x.txt")
    assert bucket.list_files() == ["docs/notes/y.txt"]


def test_bucket_lookup_and_creation_are_idempotent(conn, bucket):
    assert conn.retrieve_bucket(bucket.name).name == bucket.name
    assert conn.create_bucket(bucket.name).name == bucket.name  # already ours: fine
    assert bucket.name in [b.name for b in conn.buckets()]
    with pytest.raises(qcompute.MissingBucketException, match="e2e-no-such-bucket"):
        conn.retrieve_bucket("e2e-no-such-bucket")
