"""The S3 front of the official SDK (storage/s3front.py): against a scripted HTTP upstream for
the framing, and against the session's real SeaweedFS for the S3 behaviour."""
from __future__ import annotations

import hashlib
import http.client
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from qcompute.server.storage.s3front import S3Front
from qcompute.server.storage.seaweed import BUCKETS_FOLDER

ERROR = ("<?xml version='1.0' encoding='UTF-8'?><Error><Code>{}</Code><Message>m</Message>"
         "<RequestId>r1</RequestId></Error>")


class Upstream(BaseHTTPRequestHandler):
    """A scripted S3-like server: what a path answers is in ``do_*``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", chunked: bool = False,
              headers: tuple = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("x-amz-request-id", "r1")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:5], body[5:]):
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_PUT(self) -> None:
        codes = {"/owned": "BucketAlreadyOwnedByYou", "/owned-chunked": "BucketAlreadyOwnedByYou",
                 "/admins": "BucketAlreadyExists", "/other": "InvalidBucketState"}
        if self.path.rstrip("/") in codes:
            self._body()
            self._send(409, ERROR.format(codes[self.path.rstrip("/")]).encode(),
                       chunked=self.path.endswith("chunked"))
        elif self.path in ("/Meshroom_In", "/bk"):  # names SeaweedFS's CreateBucket refuses
            self._body()
            self._send(400, ERROR.format("InvalidBucketName").encode())
        elif self.path == "/fresh":
            self._send(200, headers=(("Location", "/fresh"),))
        else:  # an object: answer with what arrived
            body = self._body()
            self._send(200, headers=(("ETag", f'"{hashlib.md5(body).hexdigest()}"'),
                                     ("x-host", self.headers["Host"]),
                                     ("x-length", str(len(body)))))

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self._send(200, b"hello chunked world", chunked=True)
        elif self.path == "/then-idle-close":  # as SeaweedFS closes an idle connection
            self._send(200, b"bye")
            self.close_connection = True
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"read me until the end")
            self.close_connection = True
        else:
            self._send(200, self.path.encode() * 3)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "12345")
        self.end_headers()

    def do_DELETE(self) -> None:
        self._send(204)


@pytest.fixture(scope="module")
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    front = S3Front(f"http://127.0.0.1:{server.server_address[1]}")
    front.start()
    yield front
    front.stop()
    server.shutdown()
    server.server_close()


def _request(front: S3Front, method: str, path: str, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return conn, response, response.read()


@pytest.mark.parametrize("path", ["/owned", "/owned-chunked", "/admins", "/owned/"])
def test_create_bucket_already_yours_is_a_200(scripted, path):
    _, response, body = _request(scripted, "PUT", path)
    assert (response.status, body) == (200, b"")
    assert response.getheader("Location") == path.rstrip("/")
    assert response.getheader("x-amz-request-id") == "r1"


def test_other_answers_pass_unchanged(scripted):
    _, response, body = _request(scripted, "PUT", "/other")
    assert response.status == 409 and b"<Code>InvalidBucketState</Code>" in body
    _, response, _ = _request(scripted, "PUT", "/fresh")
    assert response.status == 200
    _, response, body = _request(scripted, "PUT", "/owned?versioning", body=b"<x/>")
    assert response.status == 200 and response.getheader("x-length") == "4"  # not CreateBucket


@pytest.mark.parametrize("outcome, status", [(None, 400), (True, 200), (False, 200),
                                             (OSError("filer down"), 503)])
def test_create_bucket_of_a_qarnot_name(scripted, outcome, status):
    """SeaweedFS refuses ``Meshroom_In``, Qarnot accepts it: the front has it made (made now or
    made before: a 200 both times); a failure is a 503; no ``make_bucket``: relayed as is."""
    made = []

    def make_bucket(name: str) -> bool:
        made.append(name)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    front = S3Front(f"http://127.0.0.1:{scripted.upstream[1]}",
                    make_bucket=None if outcome is None else make_bucket)
    front.start()
    try:
        _, response, body = _request(front, "PUT", "/Meshroom_In")
        assert response.status == status, body
        assert made == ([] if outcome is None else ["Meshroom_In"])
        if status == 200:
            assert body == b"" and response.getheader("Location") == "/Meshroom_In"
        else:
            assert (b"InvalidBucketName" if status == 400 else b"ServiceUnavailable") in body
        _, response, body = _request(front, "PUT", "/bk")  # refused by Qarnot too: says why
        assert response.status == 400 and b"<Message>'bk' is not a valid bucket name: it has 2 " \
            b"characters, a bucket name has 3 to 63</Message>" in body
        assert made == ([] if outcome is None else ["Meshroom_In"])
    finally:
        front.stop()


def test_framing_on_one_kept_alive_connection(scripted):
    conn = http.client.HTTPConnection("127.0.0.1", scripted.port, timeout=5)
    payload = bytes(range(256)) * 12000  # 3 MB in several reads

    def call(method, path, body=None, headers=None):
        headers = headers or {}
        conn.request(method, path, body=body, headers=headers,
                     encode_chunked="Transfer-Encoding" in headers)
        response = conn.getresponse()
        return response, response.read()

    response, _ = call("PUT", "/b/big", payload, {"Host": "signed.example:9000"})
    assert response.getheader("ETag") == f'"{hashlib.md5(payload).hexdigest()}"'
    assert response.getheader("x-host") == "signed.example:9000"  # the Host header is kept
    response, body = call("GET", "/chunked")
    assert body == b"hello chunked world"
    response, body = call("HEAD", "/b/big")
    assert (response.getheader("Content-Length"), body) == ("12345", b"")
    response, body = call("DELETE", "/b/big")
    assert (response.status, body) == (204, b"")
    response, _ = call("PUT", "/b/streamed", io.BytesIO(b"x" * 70000),
                       {"Transfer-Encoding": "chunked"})
    assert response.getheader("x-length") == "70000"
    response, _ = call("PUT", "/b/empty", b"", {"Expect": "100-continue"})
    assert response.getheader("x-length") == "0"
    response, body = call("GET", "/b/last")
    assert body == b"/b/last" * 3


def test_body_until_close(scripted):
    _, _, body = _request(scripted, "GET", "/until-close")
    assert body == b"read me until the end"


def test_upstream_closing_an_idle_connection_is_reopened(scripted):
    conn, response, body = _request(scripted, "GET", "/then-idle-close")
    assert body == b"bye"
    time.sleep(0.2)  # the upstream's FIN arrives; the client's connection stays open
    conn.request("GET", "/b/next")
    assert conn.getresponse().read() == b"/b/next" * 3


def test_stop_closes_everything(scripted):
    front = S3Front(f"http://127.0.0.1:{scripted.upstream[1]}")
    front.start()
    client = socket.create_connection(("127.0.0.1", front.port), timeout=5)
    client.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = b""
    while not answer.endswith(b"/x/x/x"):
        answer += client.recv(1000)
    assert answer.startswith(b"HTTP/1.1 200")
    front.stop()
    assert client.recv(100) == b""  # the front closed it
    client.close()
    assert not front.is_running()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", front.port), timeout=1)


def test_unreachable_upstream_is_a_502():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    front = S3Front(f"http://127.0.0.1:{port}")
    front.start()
    try:
        _, response, _ = _request(front, "GET", "/x")
        assert response.status == 502
    finally:
        front.stop()


def test_only_plain_http_upstreams():
    with pytest.raises(ValueError):
        S3Front("https://s3.example.com")


# -- the real SeaweedFS --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weed_front(seaweed):
    front = S3Front(seaweed.endpoint_url)
    front.start()
    yield front
    front.stop()


def _client(url: str, access: str, secret: str):
    """A boto3 client as the official SDK builds it (Expect: 100-continue left on)."""
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=url, aws_access_key_id=access, aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(request_checksum_calculation="when_required", read_timeout=10,
                      retries={"max_attempts": 1}))


def test_seaweedfs_create_bucket_through_the_front(seaweed, weed_front, s3_admin):
    seaweed.configure_identity("front-user", "front-user", "front-secret", "front-user-")
    user = _client(weed_front.endpoint_url, "front-user", "front-secret")
    direct = _client(seaweed.endpoint_url, "front-user", "front-secret")
    user.create_bucket(Bucket="front-user-a")
    # SeaweedFS itself: 409, the reason this front exists (if it ever answers 200, drop the front)
    with pytest.raises(ClientError) as caught:
        direct.create_bucket(Bucket="front-user-a")
    assert caught.value.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"
    user.create_bucket(Bucket="front-user-a")
    s3_admin.create_bucket(Bucket="front-user-b")  # in the user's namespace, made by the server
    user.create_bucket(Bucket="front-user-b")
    with pytest.raises(ClientError) as caught:  # outside the user's namespace: still refused
        user.create_bucket(Bucket="someone-else")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"


def test_seaweedfs_objects_through_the_front(seaweed, weed_front, s3_admin):
    client = _client(weed_front.endpoint_url, seaweed.admin_access_key, seaweed.admin_secret_key)
    client.create_bucket(Bucket="front-objects")
    data = bytes(range(256)) * 45000  # 11.5 MB: 3 parts of 5 MiB
    client.upload_fileobj(io.BytesIO(data), "front-objects", "big",
                          Config=TransferConfig(multipart_threshold=5 * 2**20,
                                                multipart_chunksize=5 * 2**20))
    started = time.monotonic()
    client.put_object(Bucket="front-objects", Key="empty", Body=b"")  # Expect on an empty body
    client.put_object(Bucket="front-objects", Key="small", Body=b"small")
    assert time.monotonic() - started < 5  # no stall of the next request (boto/boto3#3757)
    assert s3_admin.get_object(Bucket="front-objects", Key="big")["Body"].read() == data
    got = io.BytesIO()
    client.download_fileobj("front-objects", "big", got)
    assert got.getvalue() == data
    ranged = client.get_object(Bucket="front-objects", Key="big", Range="bytes=10-19")
    assert ranged["Body"].read() == data[10:20]
    with pytest.raises(ClientError) as caught:
        client.get_object(Bucket="front-objects", Key="missing")
    assert caught.value.response["Error"]["Code"] == "NoSuchKey"
    wrong = _client(weed_front.endpoint_url, seaweed.admin_access_key, "wrong-secret")
    for _ in range(2):  # refused before the body is sent (Expect: 100-continue), twice
        with pytest.raises(ClientError) as caught:
            wrong.put_object(Bucket="front-objects", Key="x", Body=b"x" * 100000)
        assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    keys = [o["Key"] for o in client.list_objects(Bucket="front-objects")["Contents"]]
    assert keys == ["big", "empty", "small"]
    client.delete_objects(Bucket="front-objects", Delete={"Objects": [{"Key": k} for k in keys]})
    client.delete_bucket(Bucket="front-objects")


def test_seaweedfs_qarnot_names_through_the_front(seaweed):
    """CreateBucket of ``<prefix>Meshroom_In`` reaches make_bucket only once SeaweedFS checked the
    signature and the right to that name: a wrong secret or another prefix is a 403 and makes
    nothing; a name Qarnot refuses too is a 400 saying why."""
    made = []

    def make_bucket(name: str) -> bool:
        made.append(name)
        return seaweed.make_bucket(name)

    front = S3Front(seaweed.endpoint_url, make_bucket=make_bucket)
    front.start()
    try:
        seaweed.configure_identity("qn-user", "qn-user", "qn-secret", "qn-user-")
        user = _client(front.endpoint_url, "qn-user", "qn-secret")
        user.create_bucket(Bucket="qn-user-Meshroom_In")
        user.create_bucket(Bucket="qn-user-Meshroom_In")  # again: a 200, as for one it owns
        user.put_object(Bucket="qn-user-Meshroom_In", Key="in/a.txt", Body=b"a")
        assert [o["Key"] for o in user.list_objects(Bucket="qn-user-Meshroom_In")["Contents"]] \
            == ["in/a.txt"]
        refused = {
            "qn-user-Wrong_Secret": _client(front.endpoint_url, "qn-user", "wrong"),
            "Other_Prefix": user,
            "qn-user-Unknown_Key": _client(front.endpoint_url, "nobody", "x"),
        }
        for name, client in refused.items():
            with pytest.raises(ClientError) as caught:
                client.create_bucket(Bucket=name)
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, name
        admin = _client(front.endpoint_url, seaweed.admin_access_key, seaweed.admin_secret_key)
        for client, name, words in [(admin, "bk", "3 to 63"), (user, "qn-user-a..b", "'..'"),
                                    (user, "qn-user-x-", "start and end")]:
            with pytest.raises(ClientError) as caught:
                client.create_bucket(Bucket=name)
            error = caught.value.response["Error"]
            assert error["Code"] == "InvalidBucketName" and words in error["Message"], error
        assert made == ["qn-user-Meshroom_In"] * 2
        buckets = seaweed._folders(BUCKETS_FOLDER)
        assert "qn-user-Meshroom_In" in buckets and not set(refused) & set(buckets)
        user.delete_object(Bucket="qn-user-Meshroom_In", Key="in/a.txt")
        user.delete_bucket(Bucket="qn-user-Meshroom_In")
    finally:
        front.stop()
