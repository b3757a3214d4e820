"""Browsing buckets on a user's behalf, against the real embedded S3 (one SeaweedFS per session)."""
from __future__ import annotations

import io
import secrets

import pytest
from botocore.exceptions import ClientError

from qcompute.server.errors import BadRequest, Forbidden, NotFound
from qcompute.server.executors.base import S3Access
from qcompute.server.services.buckets import BucketBrowser, UploadTooLarge
from tests.helpers import s3_client


@pytest.fixture(scope="module")
def admin_access(seaweed) -> S3Access:
    return S3Access(seaweed.endpoint_url, seaweed.admin_access_key, seaweed.admin_secret_key)


@pytest.fixture
def prefix() -> str:
    """A fresh user prefix per test, as users.py makes them (``<slug>-<id>-``)."""
    return f"alice-{secrets.randbelow(10**6)}-"


@pytest.fixture
def bucket(s3_admin, prefix) -> str:
    name = f"{prefix}data"
    s3_admin.create_bucket(Bucket=name)
    for key in ("top.txt", "a/1.txt", "a/2.txt", "a/deep/3.txt", "b/4.txt"):
        s3_admin.put_object(Bucket=name, Key=key, Body=key.encode())
    return name


def test_a_user_sees_only_the_buckets_of_its_prefix_the_owner_sees_all(admin_access, s3_admin,
                                                                       bucket, prefix):
    other = f"bob-{secrets.randbelow(10**6)}-data"
    s3_admin.create_bucket(Bucket=other)
    assert BucketBrowser(admin_access, prefix).buckets() == [bucket]
    everything = BucketBrowser(admin_access, "").buckets()
    assert {bucket, other} <= set(everything)
    with pytest.raises(Forbidden, match="not yours"):
        BucketBrowser(admin_access, prefix).listing(other)


def test_the_scope_is_exactly_the_users_own_s3_identitys(seaweed, admin_access, s3_admin, prefix):
    """For each bucket, the browser allows what the user's own keys (prefix-scoped identity,
    as users get it) can list, and refuses what they cannot."""
    email, token = f"{prefix}@example.org".replace("-", ""), secrets.token_hex(12)
    seaweed.configure_identity(email, email, token, prefix)
    mine = s3_client(seaweed, email, token)
    names = [f"{prefix}x", f"{prefix[:-1]}0-x", f"{prefix.split('-')[0]}-x",
             f"bob-{secrets.randbelow(10**6)}-x"]
    for name in names:
        s3_admin.create_bucket(Bucket=name)
    browser = BucketBrowser(admin_access, prefix)
    for name in names:
        try:
            mine.list_objects_v2(Bucket=name)
            identity_may = True
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDenied"
            identity_may = False
        assert browser.allowed(name) is identity_may, name
    assert [browser.allowed(n) for n in names] == [True, False, False, False]


def test_folders_and_objects_under_a_prefix(admin_access, bucket, prefix):
    browser = BucketBrowser(admin_access, prefix)
    root = browser.listing(bucket)
    assert [f.prefix for f in root.folders] == ["a/", "b/"]
    assert [(o.key, o.size) for o in root.objects] == [("top.txt", 7)]
    assert root.next_token is None
    inner = browser.listing(bucket, "a/")
    assert [(f.prefix, f.name) for f in inner.folders] == [("a/deep/", "deep/")]
    assert [(o.key, o.name) for o in inner.objects] == [("a/1.txt", "1.txt"), ("a/2.txt", "2.txt")]


def test_listing_pages_until_every_entry_is_seen_once(admin_access, bucket, prefix, s3_admin):
    for n in range(7):
        s3_admin.put_object(Bucket=bucket, Key=f"many/f{n}.txt", Body=b"x")
        s3_admin.put_object(Bucket=bucket, Key=f"many/d{n}/inner.txt", Body=b"x")
    browser = BucketBrowser(admin_access, prefix)
    seen, token, pages = [], None, 0
    while True:
        page = browser.listing(bucket, "many/", token, page_size=4)
        pages += 1
        seen += [f.prefix for f in page.folders] + [o.key for o in page.objects]
        assert len(page.folders) + len(page.objects) <= 4
        if page.next_token is None:
            break
        token = page.next_token
    assert sorted(seen) == sorted([f"many/f{n}.txt" for n in range(7)]
                                  + [f"many/d{n}/" for n in range(7)])
    assert pages == 4


def test_download_streams_the_bytes(admin_access, s3_admin, bucket, prefix):
    body = secrets.token_bytes(300 * 1024)  # several chunks
    s3_admin.put_object(Bucket=bucket, Key="blob.bin", Body=body)
    got = BucketBrowser(admin_access, prefix).download(bucket, "blob.bin")
    assert got.size == len(body)
    chunks = list(got.chunks)
    assert len(chunks) > 1 and b"".join(chunks) == body


def test_missing_things_are_named_404s(admin_access, bucket, prefix):
    browser = BucketBrowser(admin_access, prefix)
    with pytest.raises(NotFound, match="no object 'nope.txt'") as missing_key:
        browser.download(bucket, "nope.txt")
    assert missing_key.value.code == "object_not_found"
    with pytest.raises(NotFound, match="no bucket") as missing_bucket:
        browser.listing(f"{prefix}absent")
    assert missing_bucket.value.code == "bucket_not_found"
    with pytest.raises(NotFound, match="no bucket"):
        browser.upload(f"{prefix}absent", "k", io.BytesIO(b"x"), max_bytes=10)


def test_upload_small_and_multipart(admin_access, s3_admin, bucket, prefix):
    browser = BucketBrowser(admin_access, prefix)
    assert browser.upload(bucket, "up/small.txt", io.BytesIO(b"hello"), max_bytes=10,
                          content_type="text/plain") == 5
    answer = s3_admin.get_object(Bucket=bucket, Key="up/small.txt")
    assert answer["Body"].read() == b"hello" and answer["ContentType"] == "text/plain"
    big = secrets.token_bytes(9 * 1024 * 1024)  # past boto3's 8 MiB multipart threshold
    assert browser.upload(bucket, "up/big.bin", io.BytesIO(big), max_bytes=len(big)) == len(big)
    assert s3_admin.get_object(Bucket=bucket, Key="up/big.bin")["Body"].read() == big


@pytest.mark.parametrize("size", [11, 9 * 1024 * 1024 + 1])
def test_an_upload_past_the_limit_stores_nothing(admin_access, s3_admin, bucket, prefix, size):
    browser = BucketBrowser(admin_access, prefix)
    with pytest.raises(UploadTooLarge, match="upload limit of"):
        browser.upload(bucket, "up/too-big", io.BytesIO(b"x" * size), max_bytes=size - 1)
    assert "Contents" not in s3_admin.list_objects_v2(Bucket=bucket, Prefix="up/too-big")
    assert s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_delete_an_object_then_a_prefix(admin_access, s3_admin, bucket, prefix):
    browser = BucketBrowser(admin_access, prefix)
    browser.delete(bucket, "top.txt")
    assert browser.delete_prefix(bucket, "a/") == 3
    left = s3_admin.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in left] == ["b/4.txt"]


def test_a_folder_emptied_by_a_delete_is_gone_from_the_listing(admin_access, bucket, prefix):
    """SeaweedFS keeps emptied folders; the browser removes them, and only them."""
    browser = BucketBrowser(admin_access, prefix)
    browser.delete(bucket, "b/4.txt")
    browser.delete_prefix(bucket, "a/deep/")
    assert [f.prefix for f in browser.listing(bucket).folders] == ["a/"]
    assert [f.prefix for f in browser.listing(bucket, "a/").folders] == []
    browser.delete_prefix(bucket, "a/")
    assert browser.listing(bucket).folders == []
    assert [o.key for o in browser.listing(bucket).objects] == ["top.txt"]


def test_keys_are_checked_and_other_buckets_refused_for_every_action(admin_access, bucket,
                                                                    prefix):
    browser = BucketBrowser(admin_access, prefix)
    with pytest.raises(BadRequest, match="1 to 1024 bytes"):
        browser.delete_prefix(bucket, "")
    with pytest.raises(BadRequest):
        browser.download(bucket, "k" * 1025)
    foreign = "bob-1-data"
    for action in (lambda: browser.download(foreign, "k"), lambda: browser.delete(foreign, "k"),
                   lambda: browser.delete_prefix(foreign, "a/"),
                   lambda: browser.upload(foreign, "k", io.BytesIO(b""), max_bytes=1)):
        with pytest.raises(Forbidden):
            action()
