"""The HTTP layer: headers, idempotency keys, error mapping, retries.

Error mapping and header checks use `responses`. `responses` bypasses urllib3's connection pool
(it never sleeps and cannot drop a connection), so the retry behaviour that lives there
(Retry-After, backoff, connection errors) is tested against a scripted server on 127.0.0.1.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
import responses

from qcompute import (
    APIError,
    BadRequestError,
    ConflictError,
    MissingTaskException,
    NotEnoughCreditsException,
    NotFoundError,
    QarnotGenericException,
    QComputeError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedException,
)
from qcompute._http import USER_AGENT, HttpClient, join_path

from .conftest import FakeClock
from .helpers import API, TOKEN


def client(**kwargs: Any) -> HttpClient:
    options = {"timeout": 5.0, "retry_count": 3, "retry_wait": 1.0, **kwargs}
    return HttpClient(API + "/", TOKEN, **options)


# ----------------------------------------------------------------------------- headers
def test_headers_auth_user_agent_and_idempotency_key_on_post(api: responses.RequestsMock) -> None:
    api.add("GET", f"{API}/info", json={"email": "a@b.c"})
    api.add("POST", f"{API}/tasks", json={"uuid": "u"}, status=201)
    http = client()
    assert http.get("/info") == {"email": "a@b.c"}
    assert http.post("/tasks", json={"name": "t"}) == {"uuid": "u"}
    get, post = api.calls[0].request, api.calls[1].request
    for request in (get, post):
        assert request.headers["Authorization"] == TOKEN  # raw, no "Bearer"
        assert request.headers["User-Agent"] == USER_AGENT
    assert "Idempotency-Key" not in get.headers
    assert "Content-Type" not in get.headers
    assert uuid.UUID(post.headers["Idempotency-Key"]).version == 4
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.body) == {"name": "t"}


def test_each_logical_post_gets_its_own_key(api: responses.RequestsMock) -> None:
    api.add("POST", f"{API}/tasks/u/abort")
    api.add("POST", f"{API}/tasks/u/abort")
    http = client()
    http.post("/tasks/u/abort")
    http.post("/tasks/u/abort")
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls}
    assert len(keys) == 2
    assert all(call.request.body is None for call in api.calls)


def test_a_given_idempotency_key_is_kept(api: responses.RequestsMock) -> None:
    api.add("PATCH", f"{API}/tasks/u")
    client().patch("/tasks/u", headers={"Idempotency-Key": "mine"})
    assert api.calls[0].request.headers["Idempotency-Key"] == "mine"


def test_text_empty_and_invalid_json_replies(api: responses.RequestsMock) -> None:
    api.add("GET", f"{API}/tasks/u/stdout", body="line 1\nline 2\n",
            content_type="text/plain")
    api.add("DELETE", f"{API}/tasks/u", status=204)
    api.add("GET", f"{API}/settings", body="<html>oops</html>", content_type="text/html")
    http = client()
    assert http.get("/tasks/u/stdout", expect_json=False) == "line 1\nline 2\n"
    assert http.delete("/tasks/u") is None
    with pytest.raises(APIError, match="expected JSON"):
        http.get("/settings")


def test_join_path_quotes_each_segment() -> None:
    assert join_path("profiles", "a b/c") == "/profiles/a%20b%2Fc"
    assert join_path("tasks", "u", "stdout", 3) == "/tasks/u/stdout/3"


# ----------------------------------------------------------------------------- error mapping
@pytest.mark.parametrize("status, cls", [
    (400, BadRequestError), (401, UnauthorizedException), (402, NotEnoughCreditsException),
    (403, UnauthorizedException), (404, NotFoundError), (409, ConflictError),
    (422, BadRequestError), (429, RateLimitedError), (500, ServerError), (503, ServerError),
    (418, APIError),
])
def test_status_maps_to_one_class_with_the_facts(api: responses.RequestsMock, status: int,
                                                 cls: type) -> None:
    api.add("GET", f"{API}/tasks/u", status=status,
            json={"message": "it went wrong", "code": "some_code"},
            headers={"X-Request-ID": "req-42"})
    with pytest.raises(cls) as caught:
        client(retry_count=0).get("/tasks/u")
    error = caught.value
    assert type(error) is cls
    assert isinstance(error, QarnotGenericException) and isinstance(error, QComputeError)
    assert (error.status_code, error.code, error.message, error.request_id) == (
        status, "some_code", "it went wrong", "req-42")
    assert "it went wrong" in str(error) and "req-42" in str(error)


def test_caller_picks_the_404_subclass(api: responses.RequestsMock) -> None:
    api.add("GET", f"{API}/tasks/u", status=404, json={"message": "no task u"})
    with pytest.raises(MissingTaskException) as caught:
        client().get("/tasks/u", not_found=MissingTaskException)
    assert isinstance(caught.value, NotFoundError)
    assert caught.value.message == "no task u"


@pytest.mark.parametrize("kwargs, message, code", [
    ({"json": {"error": {"message": "nested", "code": "E1"}}}, "nested", "E1"),
    ({"json": {"error": "flat"}}, "flat", None),
    ({"json": {"errors": {"name": ["is required"]}}}, "name: is required", None),
    ({"body": "plain words", "content_type": "text/plain"}, "plain words", None),
    ({"body": ""}, "Bad Request", None),
])
def test_error_body_shapes(api: responses.RequestsMock, kwargs: dict[str, Any], message: str,
                           code: Any) -> None:
    api.add("POST", f"{API}/tasks", status=400, **kwargs)
    with pytest.raises(BadRequestError) as caught:
        client().post("/tasks", json={})
    assert (caught.value.message, caught.value.code) == (message, code)


# ----------------------------------------------------------------------------- retries (responses)
def test_post_retried_on_503_and_429_with_the_same_key(api: responses.RequestsMock) -> None:
    api.add("POST", f"{API}/tasks", status=503, json={"message": "busy"})
    api.add("POST", f"{API}/tasks", status=429, json={"message": "slow down"})
    api.add("POST", f"{API}/tasks", status=201, json={"uuid": "u"})
    assert client().post("/tasks", json={"name": "t"}) == {"uuid": "u"}
    assert len(api.calls) == 3
    keys = {call.request.headers["Idempotency-Key"] for call in api.calls}
    assert len(keys) == 1
    assert all(json.loads(call.request.body) == {"name": "t"} for call in api.calls)


def test_gives_up_after_retry_count_and_raises_the_last_error(api: responses.RequestsMock) -> None:
    for _ in range(3):
        api.add("GET", f"{API}/info", status=502, json={"message": "bad gateway"})
    with pytest.raises(ServerError) as caught:
        client(retry_count=2).get("/info")
    assert caught.value.status_code == 502
    assert len(api.calls) == 3


def test_401_is_not_retried(api: responses.RequestsMock) -> None:
    api.add("GET", f"{API}/info", status=401, json={"message": "bad token"})
    with pytest.raises(UnauthorizedException, match="bad token"):
        client().get("/info")
    assert len(api.calls) == 1


# ----------------------------------------------------------------------------- retries (real server)
class Script:
    """A loopback HTTP server answering from a script; records method, path and headers."""

    def __init__(self, steps: list[tuple[Any, ...]]) -> None:
        self.steps = list(steps)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                script.seen.append((self.command, self.path, dict(self.headers)))
                step = script.steps.pop(0)
                if step[0] == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if step[0] == "stall":
                    time.sleep(step[1])
                    step = ("reply", 200, {}, {})
                _, status, headers, payload = step
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> "Script":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def script() -> Iterator[Any]:
    servers: list[Script] = []

    def start(*steps: tuple[Any, ...]) -> Script:
        server = Script(list(steps)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


def test_retry_after_is_honoured_with_the_same_key(script: Any, clock: FakeClock) -> None:
    server = script(("reply", 429, {"Retry-After": "7"}, {"message": "later"}),
                    ("reply", 503, {"Retry-After": "2"}, {"message": "busy"}),
                    ("reply", 201, {}, {"uuid": "u"}))
    http = HttpClient(server.url, TOKEN, retry_count=5, retry_wait=1.0)
    assert http.post("/tasks", json={"name": "t"}) == {"uuid": "u"}
    assert clock.sleeps == [7.0, 2.0]
    assert [seen[0] for seen in server.seen] == ["POST"] * 3
    assert len({seen[2]["Idempotency-Key"] for seen in server.seen}) == 1


def test_a_key_still_in_use_is_retried_other_conflicts_are_not(script: Any,
                                                               clock: FakeClock) -> None:
    in_use = {"message": "still running", "code": "idempotency_key_in_use"}
    server = script(("reply", 409, {"Retry-After": "1"}, in_use),
                    ("reply", 200, {}, [{"statusCode": 201, "uuid": "u"}]),
                    ("reply", 409, {}, {"message": "reused", "code": "idempotency_key_reused"}))
    http = HttpClient(server.url, TOKEN, retry_count=3)
    assert http.post("/tasks", json=[{}]) == [{"statusCode": 201, "uuid": "u"}]
    assert clock.sleeps == [1.0]
    assert server.seen[0][2]["Idempotency-Key"] == server.seen[1][2]["Idempotency-Key"]
    with pytest.raises(ConflictError, match="reused"):
        http.post("/tasks", json=[{}])
    assert len(server.seen) == 3


def test_backoff_grows_and_is_capped(script: Any, clock: FakeClock) -> None:
    server = script(*[("reply", 503, {}, {})] * 4, ("reply", 200, {}, {"ok": True}))
    assert HttpClient(server.url, TOKEN, retry_count=5, retry_wait=10.0).get("/x") == {"ok": True}
    # urllib3: no wait before the first retry, then factor * 2**(n-1), capped at 30 s
    assert clock.sleeps == [20.0, 30.0, 30.0]


def test_dropped_connection_is_retried_with_the_same_key(script: Any) -> None:
    server = script(("drop",), ("reply", 201, {}, {"uuid": "u"}))
    http = HttpClient(server.url, TOKEN, retry_count=2)
    assert http.post("/tasks", json={}) == {"uuid": "u"}
    assert len(server.seen) == 2
    assert server.seen[0][2]["Idempotency-Key"] == server.seen[1][2]["Idempotency-Key"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_connection_fails_fast_naming_the_url(clock: FakeClock,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Refused: 2 quick retries (0.25 s, 0.5 s), whatever retry_count and retry_wait say, each
    logged at INFO; then one TransportError naming the URL and ``qcompute status``."""
    url = f"http://127.0.0.1:{_closed_port()}"
    http = HttpClient(url, TOKEN, retry_count=5, retry_wait=1.0)
    with caplog.at_level(logging.INFO, logger="qcompute._http"), \
            pytest.raises(TransportError) as caught:
        http.get("/info")
    assert isinstance(caught.value, QComputeError)
    assert caught.value.__cause__ is not None
    assert clock.sleeps == [0.25, 0.5]
    message = str(caught.value)
    assert message.startswith(f"cannot reach the cluster at {url} (GET /info: ")
    assert "qcompute status" in message and "Connection refused" in message
    assert "HTTPConnectionPool" not in message  # urllib3's wording stays in __cause__
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying GET")]
    assert [r.levelno for r in retries] == [logging.INFO] * 2


def test_connect_timeout_is_short_and_not_retried(clock: FakeClock,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A listener whose backlog is full drops new SYNs: the connect times out after
    ``connect_timeout``, not ``timeout``, and is not tried again."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # fills the accept queue
        port = listener.getsockname()[1]
        http = HttpClient(f"http://127.0.0.1:{port}", TOKEN, timeout=30.0, connect_timeout=0.2,
                          retry_count=5)
        with caplog.at_level(logging.INFO, logger="qcompute._http"), \
                pytest.raises(TransportError, match="qcompute status") as caught:
            http.get("/info")
    assert "timed out" in str(caught.value)
    assert clock.sleeps == []
    assert not [r for r in caplog.records if r.getMessage().startswith("retrying")]


def test_connect_timeout_is_capped_by_the_timeout() -> None:
    assert HttpClient(API, TOKEN).connect_timeout == 5.0
    assert HttpClient(API, TOKEN, timeout=2.0).connect_timeout == 2.0


def test_read_timeout_raises_transport_error(script: Any) -> None:
    server = script(("stall", 0.5))
    http = HttpClient(server.url, TOKEN, timeout=0.1, retry_count=0)
    with pytest.raises(TransportError, match="GET"):
        http.get("/slow")
