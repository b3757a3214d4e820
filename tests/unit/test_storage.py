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
    compute_etag,
    join_key,
    normalize_key,
    normalize_prefix,
    part_size_for,
    plan_sync,
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


def test_plan_sync(tmp_path: Path) -> None:
    same = _write(tmp_path / "same", b"same")
    changed = _write(tmp_path / "changed", b"new!")
    grown = _write(tmp_path / "grown", b"longer")
    new = _write(tmp_path / "new", b"n")
    md5 = lambda data: hashlib.md5(data).hexdigest()  # noqa: E731
    remote = {
        "p/same": ObjectInfo("p/same", md5(b"same"), 4),
        "p/changed": ObjectInfo("p/changed", md5(b"old!"), 4),
        "p/grown": ObjectInfo("p/grown", md5(b"short"), 5),
        "p/gone": ObjectInfo("p/gone", "x", 1),
        "p/folder/": ObjectInfo("p/folder/", md5(b""), 0),
        "q/other": ObjectInfo("q/other", "y", 1),
    }
    local = {"p/same": same, "p/changed": changed, "p/grown": grown, "p/new": new}
    hashed: list[str] = []

    def etag_of(path: str) -> str:
        hashed.append(path)
        return compute_etag(path)

    plan = plan_sync(local, remote, delete_prefix="p/", etag_of=etag_of)
    assert plan.upload == (("p/changed", changed), ("p/grown", grown), ("p/new", new))
    assert plan.unchanged == ("p/same",)
    assert plan.delete == ("p/gone",)  # not q/other (outside), not the folder marker
    assert sorted(hashed) == sorted([same, changed])  # sizes differ: no hashing needed
    assert plan_sync(local, remote, delete_prefix="").delete == ("p/gone", "q/other")
    assert plan_sync(local, remote, delete_prefix=None).delete == ()


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
    assert config.retries == {"total_max_attempts": 3, "mode": "standard"}
    assert "qcompute-sdk-python/" in config.user_agent_extra
    assert store.transfer_config.multipart_threshold == MULTIPART_SIZE
    assert store.transfer_config.multipart_chunksize == MULTIPART_SIZE
    assert store.transfer_config.max_request_concurrency == 16


def test_create_bucket_already_owned_is_success(store: Storage, stub: Stubber) -> None:
    stub.add_client_error("create_bucket", "BucketAlreadyOwnedByYou", http_status_code=409,
                          expected_params={"Bucket": "mine"})
    store.create_bucket("mine")


def test_create_bucket_owned_by_someone_else_fails(store: Storage, stub: Stubber) -> None:
    stub.add_client_error("create_bucket", "BucketAlreadyExists", "taken", http_status_code=409)
    with pytest.raises(StorageError, match="BucketAlreadyExists") as caught:
        store.create_bucket("theirs")
    assert (caught.value.code, caught.value.operation) == ("BucketAlreadyExists", "CreateBucket")


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
    assert (info.key, info.etag, info.size, info.last_modified) == ("out/LOREM.txt", "abc-2", 9, None)
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
