"""The TCP relay that serves the embedded S3 beyond loopback (storage/relay.py), here on
loopback in front of the session's real SeaweedFS, and the URLs the embedded storage advertises.
The relay on a real non-loopback address, with SeaweedFS's sockets checked, is in
tests/netns/test_hosts.py."""
from __future__ import annotations

import hashlib
import io
import os
import socket

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from qcompute.server.settings import ServerSettings
from qcompute.server.storage import EmbeddedStorage
from qcompute.server.storage.relay import TcpRelay
from qcompute.server.storage.seaweed import pick_free_port


@pytest.fixture(scope="module")
def relay(seaweed):
    running = TcpRelay("127.0.0.1", 0, ("127.0.0.1", seaweed.s3_port))
    running.start()
    yield running
    running.stop()


def test_signed_requests_and_streams_pass_the_relay(seaweed, relay):
    """SigV4 signs the Host header: requests relayed byte for byte stay valid; a multipart
    upload of 12 MB and its download go through whole; a wrong secret is still refused."""
    url = f"http://127.0.0.1:{relay.port}"
    client = seaweed.client(seaweed.admin_access_key, seaweed.admin_secret_key)  # direct
    through = _client(seaweed, url, seaweed.admin_secret_key)
    through.create_bucket(Bucket="relay-bucket")
    body = os.urandom(12 * 1024 * 1024)
    part = 5 * 1024 * 1024
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    through.upload_fileobj(io.BytesIO(body), "relay-bucket", "big", Config=config)
    got = client.get_object(Bucket="relay-bucket", Key="big")["Body"].read()  # stored as sent
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    again = through.get_object(Bucket="relay-bucket", Key="big")["Body"].read()
    assert again == body
    with pytest.raises(ClientError) as refused:
        _client(seaweed, url, "wrong-secret").list_buckets()
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_a_stopped_relay_refuses_connections(seaweed):
    relay = TcpRelay("127.0.0.1", 0, ("127.0.0.1", seaweed.s3_port))
    relay.start()
    relay.stop()
    assert not relay.is_running()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=5).close()


def test_an_unreachable_upstream_closes_the_connection():
    relay = TcpRelay("127.0.0.1", 0, ("127.0.0.1", pick_free_port()))
    relay.start()
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = sock.recv(100)
            except ConnectionResetError:  # closed with the request unread
                answer = b""
            assert answer == b""
    finally:
        relay.stop()


@pytest.mark.parametrize("host, more, url", [
    ("127.0.0.1", {}, "http://127.0.0.1:18333"),
    ("localhost", {}, "http://127.0.0.1:18333"),
    ("10.1.2.3", {}, "http://10.1.2.3:18333"),
    ("10.1.2.3", {"ray_node_ip": "10.9.9.9"}, "http://10.9.9.9:18333"),
    ("0.0.0.0", {"public_url": "https://qc.example.com/"}, "http://qc.example.com:18333"),
    ("0.0.0.0", {}, "http://127.0.0.1:18333"),
    ("fd00::1", {}, "http://[fd00::1]:18333"),
])
def test_the_advertised_s3_url(tmp_path, host, more, url):
    """Loopback unless the server listens beyond it; then the name others reach it by."""
    settings = ServerSettings(data_dir=tmp_path, host=host, **more)
    assert EmbeddedStorage(settings).endpoint_url == url
    assert settings.beyond_loopback == (host not in ("127.0.0.1", "localhost"))


def _client(seaweed, url: str, secret: str):
    import boto3
    from botocore.config import Config

    from qcompute._storage import no_continue_for_empty_body

    client = boto3.session.Session().client(
        "s3", endpoint_url=url, aws_access_key_id=seaweed.admin_access_key,
        aws_secret_access_key=secret, region_name="us-east-1",
        config=Config(read_timeout=30, retries={"max_attempts": 1}))
    client.meta.events.register("before-call.s3", no_continue_for_empty_body)
    return client
