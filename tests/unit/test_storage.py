"""The S3 adapter without a network: key rules, ETags, sync planning, client settings and error
mapping (botocore's Stubber answers instead of a server)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from botocore.stub import Stubber

from qcompute import MissingBucketException, StorageError
from qcompute._storage import (
    MULTIPART_SIZE,
    ObjectInfo,
    Storage,
    _fast_timestamp,
    compute_etag,
    denied_message,
    etag_for_label,
    etag_label,
    join_key,
    normalize_key,
    normalize_prefix,
    part_size_for,
    upload_label,
)


@pytest.mark.parametrize("key, expected", [
    ("a/b.txt", "a/b.txt"), ("/a//b.txt", "a/b.txt"), ("\\\\a\\b.txt", "a/b.txt"),
    ("  dir/  ", "dir/"), ("a///b//", "a/b/"), ("", ""),
])
def test_normalize_key(key: str, expected: str) -> None:
    assert normalize_key(key) == expected


def test_prefix_and_join() -> None:
    assert normalize_prefix(None) == "" and normalize_prefix("") == ""
    assert normalize_prefix("out") == "out/" and normalize_prefix("/out//") == "out/"
    assert join_key("out", "a/b.txt") == "out/a/b.txt"
    assert join_key("out/", "/a") == "out/a"
    assert join_key(None, "a") == "a"


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_etag_of_a_small_file_is_its_md5(tmp_path: Path) -> None:
    data = b"hello world" * 100
    assert compute_etag(_write(tmp_path / "f", data)) == hashlib.md5(data).hexdigest()
    assert compute_etag(_write(tmp_path / "e", b"")) == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("size, parts", [(2500, 3), (2048, 2), (1024, 1)])
def test_etag_of_a_multipart_file(tmp_path: Path, size: int, parts: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunks = [data[i:i + 1024] for i in range(0, len(data), 1024)]
    expected = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest()
    assert compute_etag(_write(tmp_path / "f", data), part_size=1024) == f"{expected}-{parts}"


def test_part_size_doubles_past_ten_thousand_parts() -> None:
    assert part_size_for(MULTIPART_SIZE * 10_000) == MULTIPART_SIZE
    assert part_size_for(MULTIPART_SIZE * 10_000 + 1) == 2 * MULTIPART_SIZE


def _multipart(data: bytes, part: int) -> str:
    chunks = [data[i:i + part] for i in range(0, len(data), part)] or [b""]
    return hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest() + \
        f"-{len(chunks)}"


def test_etag_for_label(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10  # 2560 bytes
    path = _write(tmp_path / "f", data)
    assert etag_for_label(path, "md5") == hashlib.md5(data).hexdigest()
    assert etag_for_label(path, "1024") == _multipart(data, 1024)  # 3 parts
    assert etag_for_label(path, "4096") == _multipart(data, 4096)  # a one-part multipart upload
    assert etag_for_label(_write(tmp_path / "e", b""), "1024") == _multipart(b"", 1024)


MIB = 1024 * 1024


@pytest.mark.parametrize("size, etag, label", [
    (10, "abc", "md5"),                                 # single-part: plain MD5
    (20 * MIB, "abc", "md5"),                           # large but uploaded in one PUT
    (20 * MIB, "abc-3", str(8 * MIB)),                  # ours: 8 MiB parts
    (12 * MIB, "abc-3", str(5 * MIB)),                  # rclone-style 5 MiB parts
    (40 * MIB, "abc-3", str(15 * MIB)),                 # s3cmd-style 15 MiB parts
    (7 * MIB, "abc-7", str(MIB)),                       # no common size fits: whole MiB
    (3, "abc-7", None),                                 # 3 bytes cannot make 7 parts
    (10, "abc-x", None),                                # not an ETag we understand
])
def test_etag_label_finds_the_part_size(size: int, etag: str, label: str) -> None:
    assert etag_label(size, etag) == label


def test_upload_label_follows_the_multipart_threshold() -> None:
    assert upload_label(MULTIPART_SIZE - 1) == "md5"
    assert upload_label(MULTIPART_SIZE) == str(MULTIPART_SIZE)
    assert upload_label(MULTIPART_SIZE * 10_001) == str(2 * MULTIPART_SIZE)


def test_fast_timestamp_parser() -> None:
    from datetime import datetime, timezone

    assert _fast_timestamp("2026-01-02T03:04:05.678Z") == datetime(
        2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    # headers use RFC 1123: botocore's own parser takes over
    parsed = _fast_timestamp("Fri, 02 Jan 2026 03:04:05 GMT")
    assert parsed.timestamp() == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()


# ----------------------------------------------------------------------------- the adapter
@pytest.fixture
def store() -> Storage:
    return Storage("http://127.0.0.1:18333", "me@x.org", "token", retry_count=2)


@pytest.fixture
def stub(store: Storage) -> Iterator[Stubber]:
    with Stubber(store.client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def test_client_settings(store: Storage) -> None:
    config = store.client.meta.config
    assert store.client.meta.endpoint_url == "http://127.0.0.1:18333"
    assert store.client.meta.region_name == "us-east-1"
    assert config.s3 == {"addressing_style": "path"}
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries == {"total_max_attempts": 5, "mode": "standard"}  # 2 retries + 2
    assert config.connect_timeout == 10
    assert "qcompute-sdk-python/" in config.user_agent_extra
    assert store.transfer_config.multipart_threshold == MULTIPART_SIZE
    assert store.transfer_config.multipart_chunksize == MULTIPART_SIZE
    assert store.transfer_config.max_request_concurrency == 8


def test_no_retries_means_none_for_s3_too() -> None:
    quiet = Storage("http://127.0.0.1:18333", "me@x.org", "token", retry_count=0, direct=False)
    assert quiet.client.meta.config.retries == {"total_max_attempts": 1, "mode": "standard"}


def test_create_bucket_already_owned_is_success(store: Storage, stub: Stubber) -> None:
    stub.add_client_error("create_bucket", "BucketAlreadyOwnedByYou", http_status_code=409,
                          expected_params={"Bucket": "mine"})
    store.create_bucket("mine")


def test_create_bucket_owned_by_someone_else_fails(store: Storage, stub: Stubber) -> None:
    stub.add_client_error("create_bucket", "BucketAlreadyExists", "taken", http_status_code=409)
    with pytest.raises(StorageError, match="BucketAlreadyExists") as caught:
        store.create_bucket("theirs")
    assert (caught.value.code, caught.value.operation) == ("BucketAlreadyExists", "CreateBucket")


@pytest.mark.parametrize("name, reason", [
    ("bk", "it has 2 characters, a bucket name has 3 to 63"),
    ("x" * 64, "it has 64 characters"), ("a..b", "it must not contain '..'"),
    ("-x-", "it must start and end with a letter or a digit"), ("in_", "it must start and end"),
    ("a b", "' ' is not allowed"), ("été-1", "'é' is not allowed"),
])
def test_create_bucket_refuses_what_qarnot_refuses(store: Storage, stub: Stubber, name: str,
                                                   reason: str) -> None:
    with pytest.raises(StorageError, match=f"is not a valid bucket name: {reason}") as caught:
        store.create_bucket(name)  # before any request: the stub has no answer to give
    assert (caught.value.code, caught.value.operation) == ("InvalidBucketName", "CreateBucket")


def test_create_bucket_goes_through_the_create_url() -> None:
    """Only CreateBucket goes to the cluster's S3 front (which creates ``meshroomIn``)."""
    asked: list[str] = []
    store = Storage("http://127.0.0.1:18333", "me@x.org", "token",
                    create_url=lambda: asked.append("url") or "http://127.0.0.1:18334")
    creator = store._bucket_creator()
    assert creator.meta.endpoint_url == "http://127.0.0.1:18334" and creator is not store.client
    with Stubber(creator) as front, Stubber(store.client):
        for name in ("meshroomIn", "autodock_vina-demo-input"):
            front.add_response("create_bucket", {}, expected_params={"Bucket": name})
            store.create_bucket(name)
        front.assert_no_pending_responses()
    assert asked == ["url"]  # asked once
    direct = Storage("http://s3.test", "a", "b", create_url=lambda: None)
    assert direct._bucket_creator() is direct.client  # no front: the storage itself


def test_missing_bucket_maps_to_missing_bucket_exception(store: Storage, stub: Stubber) -> None:
    stub.add_client_error("head_bucket", "404", "Not Found", http_status_code=404)
    stub.add_client_error("list_objects_v2", "NoSuchBucket", "gone", http_status_code=404)
    with pytest.raises(MissingBucketException, match="'nope'"):
        store.head_bucket("nope")
    with pytest.raises(MissingBucketException) as caught:
        list(store.list_objects("gone"))
    assert caught.value.status_code == 404 and caught.value.code == "NoSuchBucket"


def test_missing_object_is_a_storage_error(store: Storage, stub: Stubber) -> None:
    stub.add_client_error("head_object", "404", "Not Found", http_status_code=404)
    with pytest.raises(StorageError, match="no object 'k'") as caught:
        store.head_object("b", "k")
    assert caught.value.code == "NoSuchKey"


def test_list_objects_pages_and_strips_etag_quotes(store: Storage, stub: Stubber) -> None:
    stub.add_response("list_objects_v2", {
        "Contents": [{"Key": "p/a", "ETag": '"e1"', "Size": 1}], "IsTruncated": True,
        "NextContinuationToken": "next"}, {"Bucket": "b", "Prefix": "p/"})
    stub.add_response("list_objects_v2", {
        "Contents": [{"Key": "p/b", "ETag": '"e2-2"', "Size": 9}], "IsTruncated": False},
        {"Bucket": "b", "Prefix": "p/", "ContinuationToken": "next"})
    listed = list(store.list_objects("b", "p/"))
    assert [(o.key, o.etag, o.size) for o in listed] == [("p/a", "e1", 1), ("p/b", "e2-2", 9)]


def test_object_info_is_its_key_with_metadata() -> None:
    info = ObjectInfo("out/LOREM.txt", "abc-2", 9)
    assert info == "out/LOREM.txt" and sorted([info, ObjectInfo("a", "", 0)]) == ["a", info]
    assert (info.key, info.etag, info.size, info.last_modified) == (
        "out/LOREM.txt", "abc-2", 9, None)
    assert type(info.key) is str
    assert repr(info) == "ObjectInfo('out/LOREM.txt', etag='abc-2', size=9)"


def test_delete_objects_batches_and_reports_failures(store: Storage, stub: Stubber) -> None:
    keys = [f"k{i}" for i in range(1001)]
    stub.add_response("delete_objects", {}, {"Bucket": "b", "Delete": {
        "Objects": [{"Key": k} for k in keys[:1000]], "Quiet": True}})
    stub.add_response("delete_objects", {"Errors": [{"Key": "k1000", "Code": "AccessDenied"}]})
    with pytest.raises(StorageError, match="k1000: AccessDenied"):
        store.delete_objects("b", keys)


def test_list_buckets(store: Storage, stub: Stubber) -> None:
    stub.add_response("list_buckets", {"Buckets": [{"Name": "a"}, {"Name": "b"}]})
    assert store.list_buckets() == ["a", "b"]


def test_resource_is_built_once(store: Storage) -> None:
    resource: Any = store.resource
    assert store.resource is resource
    assert resource.meta.client.meta.endpoint_url == "http://127.0.0.1:18333"


def test_put_file_returns_the_etag_and_reports_progress(store: Storage, stub: Stubber,
                                                        tmp_path: Path) -> None:
    path = _write(tmp_path / "f", b"hello")
    stub.add_response("put_object", {"ETag": '"5d41402abc4b2a76b9719d911017c592"'},
                      {"Bucket": "b", "Key": "k", "Body": b"hello"})
    seen: list[int] = []
    assert store.put_file("b", "k", path, 5, seen.append) == "5d41402abc4b2a76b9719d911017c592"
    assert seen == [5]


def test_copy_object_with_if_match(store: Storage, stub: Stubber) -> None:
    stub.add_response("copy_object", {"CopyObjectResult": {"ETag": '"e1"'}}, {
        "Bucket": "b", "Key": "dst", "CopySource": {"Bucket": "b", "Key": "src"},
        "CopySourceIfMatch": '"e1"'})
    assert store.copy_object("b", "src", "dst", if_match="e1") == "e1"
    stub.add_client_error("copy_object", "PreconditionFailed", http_status_code=412)
    with pytest.raises(StorageError) as caught:
        store.copy_object("b", "src", "dst", if_match="old")
    assert caught.value.code == "PreconditionFailed"


def test_get_to_file_writes_then_renames(store: Storage, stub: Stubber, tmp_path: Path) -> None:
    import io

    from botocore.response import StreamingBody

    stub.add_response("get_object", {"ETag": '"e"', "Body": StreamingBody(io.BytesIO(b"data"), 4)},
                      {"Bucket": "b", "Key": "k"})
    seen: list[int] = []
    assert store.get_to_file("b", "k", str(tmp_path / "out"), seen.append) == "e"
    assert (tmp_path / "out").read_bytes() == b"data" and seen == [4]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary file left


def test_access_denied_names_the_bucket_prefix(stub: Stubber) -> None:
    store = Storage("http://127.0.0.1:18333", "me@x.org", "t", bucket_prefix=lambda: "me-2-")
    with Stubber(store.client) as denied:
        denied.add_client_error("create_bucket", "AccessDenied", "Access Denied", 403)
        with pytest.raises(StorageError, match=r"must start with 'me-2-'.*'me-2-results'") as got:
            store.create_bucket("results")
        assert (got.value.code, got.value.operation) == ("AccessDenied", "CreateBucket")
        denied.add_client_error("head_bucket", "403", "Forbidden", 403)  # HEAD: no error body
        with pytest.raises(StorageError, match="must start with 'me-2-'"):
            store.head_bucket("other")


@pytest.mark.parametrize("prefix, bucket, expected", [
    ("alice-3-", "data", "your bucket names must start with 'alice-3-'"),
    ("alice-3-", "alice-3-data", "should be allowed; check the storage credentials"),
    ("", "data", "may use any bucket name"),
    (None, "data", "AccessDenied: nope"),
])
def test_denied_message(prefix: Any, bucket: str, expected: str) -> None:
    assert expected in denied_message("PutObject", bucket, prefix, "nope")


def test_a_failing_prefix_lookup_keeps_the_original_error() -> None:
    def broken() -> str:
        raise RuntimeError("GET /info failed")

    store = Storage("http://127.0.0.1:18333", "me@x.org", "t", bucket_prefix=broken)
    with Stubber(store.client) as denied:
        denied.add_client_error("list_objects_v2", "AccessDenied", "Access Denied", 403)
        with pytest.raises(StorageError, match="access denied to bucket 'b'"):
            list(store.list_objects("b"))


def test_the_direct_path_falls_back_to_boto3_then_stops_trying(tmp_path: Path) -> None:
    # nothing listens on port 9 (discard): every direct request fails at once
    store = Storage("http://127.0.0.1:9", "me@x.org", "t", retry_count=0)
    path = _write(tmp_path / "f", b"hello")
    with Stubber(store.client) as stub:
        for _ in range(7):
            stub.add_response("put_object", {"ETag": '"e"'})
        for _ in range(7):
            assert store.put_file("b", "k", path, 5) == "e"
    assert store._direct is not None and not store._direct.on
    assert Storage("http://127.0.0.1:9", "a", "b", direct=False)._direct is None
