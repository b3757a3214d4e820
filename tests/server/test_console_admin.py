"""Console routes without a browser (TestClient, a fake executor, the session's real
SeaweedFS for the bucket browser): uploads streamed as a PUT and capped by
``console_upload_max_bytes`` with nothing stored past it, the form fallback, and the owner
rotating its own token from the users page."""
from __future__ import annotations

import asyncio
import re
import secrets
import threading

import pytest

from qcompute.server.console.buckets import _Body
from qcompute.server.executors.base import S3Access

from .conftest import serving

LIMIT = 9 * 2**20  # past boto3's 8 MiB multipart threshold: a too-large upload has begun parts
ORIGIN = "http://testserver"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, token: str) -> str:
    """Sign the client's cookie jar in; returns the session's CSRF token."""
    page = client.get("/console/login")
    answer = client.post("/console/login", data={"token": token, "csrf_token": csrf_of(page.text)},
                         headers={"Origin": ORIGIN}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/console/tasks").text)


@pytest.fixture
def console(tmp_path, seaweed):
    with serving(tmp_path, console_upload_max_bytes=LIMIT) as running:
        running.storage.admin_access = S3Access(seaweed.endpoint_url, seaweed.admin_access_key,
                                                seaweed.admin_secret_key)
        running.csrf = sign_in(running.client, running.headers["Authorization"])
        yield running


@pytest.fixture
def bucket(s3_admin) -> str:
    name = f"console-up-{secrets.token_hex(4)}"
    s3_admin.create_bucket(Bucket=name)
    return name


def put(console, bucket: str, body, name: str = "f.bin", **headers):
    return console.client.put(f"/console/buckets/{bucket}/upload",
                              params={"prefix": "in/", "name": name}, content=body,
                              headers={"Origin": ORIGIN, "X-CSRF-Token": console.csrf,
                                       **headers})


def stored(s3_admin, bucket: str) -> list[str]:
    return [o["Key"] for o in s3_admin.list_objects_v2(Bucket=bucket).get("Contents", ())]


def test_a_put_upload_is_stored_under_its_folder(console, bucket, s3_admin):
    body = secrets.token_bytes(3 * 2**20)
    answer = put(console, bucket, body, "a/b\\\\data.bin", **{"Content-Type": "image/png"})
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"key": "in/data.bin", "size": len(body),
                             "listing": f"/console/buckets/{bucket}?prefix=in%2F"}
    got = s3_admin.get_object(Bucket=bucket, Key="in/data.bin")
    assert got["Body"].read() == body and got["ContentType"] == "image/png"


def test_a_put_without_the_csrf_header_is_refused_unread(console, bucket, s3_admin):
    answer = put(console, bucket, b"x" * 100, **{"X-CSRF-Token": "",
                                                 "Content-Type": "multipart/form-data"})
    assert answer.status_code == 403 and "CSRF token is missing" in answer.text
    assert stored(s3_admin, bucket) == []


def test_a_put_past_the_limit_by_its_length_is_refused_before_any_byte(console, bucket,
                                                                      s3_admin):
    answer = put(console, bucket, b"x" * (LIMIT + 1))
    assert answer.status_code == 413
    assert f"upload limit of {LIMIT} bytes" in answer.text
    assert stored(s3_admin, bucket) == []


def test_a_streamed_put_past_the_limit_stores_nothing(console, bucket, s3_admin):
    """No length given (chunked): the server counts while it streams to S3, stops past the
    limit, and aborts the multipart upload it had begun. (32 KiB past it: within the body
    cap of the path, limit + FORM_OVERHEAD, which would answer 413 itself.)"""
    def chunks():
        for _ in range(9):
            yield secrets.token_bytes(2**20)
        yield secrets.token_bytes(32 * 1024)

    answer = put(console, bucket, chunks())
    assert answer.status_code == 413, answer.text
    assert f"upload limit of {LIMIT} bytes" in answer.text
    assert stored(s3_admin, bucket) == []
    assert s3_admin.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_the_form_without_script_still_uploads(console, bucket, s3_admin):
    answer = console.client.post(
        f"/console/buckets/{bucket}/upload", headers={"Origin": ORIGIN}, follow_redirects=False,
        data={"csrf_token": console.csrf, "prefix": "in/"},
        files={"file": ("form.txt", b"from the form", "text/plain")})
    assert answer.status_code == 303, answer.text
    assert s3_admin.get_object(Bucket=bucket, Key="in/form.txt")["Body"].read() == \
        b"from the form"


def test_the_body_is_pulled_a_part_at_a_time():
    """What boto3 reads: exactly the size asked (its parts), taken from the request's chunks
    as it asks, never the whole body first."""
    pulled = []
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def chunks():
        for n in range(10):
            pulled.append(n)
            yield bytes([n]) * 1000

    try:
        body = _Body(chunks(), loop)
        assert body.read(2500) == b"\x00" * 1000 + b"\x01" * 1000 + b"\x02" * 500
        assert pulled == [0, 1, 2]
        assert len(body.read(6000)) == 6000 and pulled == list(range(9))
        assert body.read(5000) == b"\x08" * 500 + b"\x09" * 1000
        assert body.read(10) == b""
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_the_owner_rotating_its_own_token_stays_signed_in(console):
    client = console.client
    old = console.headers["Authorization"]
    answer = client.post("/console/users/owner%40qcompute.local/rotate",
                         data={"csrf_token": console.csrf}, headers={"Origin": ORIGIN})
    assert answer.status_code == 200, answer.text
    token = re.search(r'id="issued-token" class="token">([^<]+)<', answer.text).group(1)
    assert client.get("/console/users").status_code == 200  # still signed in, by the new one
    assert client.get("/tasks", headers={"Authorization": old}).status_code == 401
    assert client.get("/tasks", headers={"Authorization": token}).status_code == 200


def test_lists_page_newest_first_with_links_both_ways(tmp_path):
    with serving(tmp_path) as running:
        sign_in(running.client, running.headers["Authorization"])
        tasks = [running.submit(name=f"t{i}") for i in range(27)]
        jobs = [running.post("/jobs", json={"name": f"j{i}"}).json()["uuid"] for i in range(27)]
        for kind, made in (("tasks", tasks), ("jobs", jobs)):
            first = running.client.get(f"/console/{kind}").text
            assert made[-1] in first and made[1] not in first and ">Newest<" not in first
            older = re.search(r'<a rel="next" href="([^"]+)"', first).group(1)
            second = running.client.get(older.replace("&amp;", "&")).text
            assert made[1] in second and made[0] in second and made[-1] not in second
            assert f'href="/console/{kind}' in second and ">Newest<" in second
            assert 'rel="next"' not in second  # 27 in pages of 25: two pages
