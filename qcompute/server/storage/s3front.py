"""A thin S3 front for the official ``qarnot`` SDK: CreateBucket of an owned bucket is a 200,
and buckets named like ``meshroomIn`` can be created (by both SDKs).

The official SDK sends CreateBucket every time it builds a ``Bucket`` (``create_bucket`` of an
existing name, ``retrieve_or_create_bucket``, reading ``task.results`` / ``task.resources`` of a
retrieved task) and raises on any error. Qarnot's storage, like AWS in us-east-1, answers 200
for a bucket the caller owns; SeaweedFS answers 409 ``BucketAlreadyOwnedByYou`` (409
``BucketAlreadyExists`` when the server's admin identity created it, e.g. a result upload into
a missing bucket). SeaweedFS has no switch for this (``weed mini -h``, 4.48).

This front is an HTTP/1.1 relay on its own loopback port, handed out by ``GET /settings`` as the
storage only to clients whose User-Agent starts with ``qarnot-sdk-python``; qcompute's SDK sends
only CreateBucket here (``qcomputeCreateBucketUrl``), and the runners talk to SeaweedFS
directly. Each client connection gets one thread and one upstream connection. Request and
response heads are forwarded byte for byte (the Host header too, so SigV4 signatures stay valid)
and bodies are streamed in 1 MiB reads, never buffered; an upstream connection SeaweedFS closed
while idle is reopened before the next request. What is changed:

* ``PUT /<bucket>`` without a query string (CreateBucket) answered 409 with
  ``BucketAlreadyOwnedByYou`` or ``BucketAlreadyExists`` becomes ``200 OK``. SeaweedFS checks
  the signature and the caller's ``Admin:<prefix>*`` right before it looks at the bucket (an
  identity limited to its prefix gets 403 elsewhere), so a 409 means the caller may administer
  that bucket.
* For the same reason a CreateBucket answered 400 ``InvalidBucketName`` proves the caller may
  create that name. If Qarnot accepts the name (upper case, ``_``: ``meshroomIn``), the front
  has ``make_bucket`` create it (:meth:`SeaweedFS.make_bucket`, the server's own access) and
  answers 200, existing or not; otherwise the error's message says why Qarnot refuses it too.
* ``Expect: 100-continue`` on an empty body is answered ``100 Continue`` by the front itself and
  not forwarded: SeaweedFS answers such a request at once, without a 100, and botocore then
  stalls on the next request of that connection until its read timeout (boto/boto3#3757).

Measured cost and the choice against other options: ``docs/architecture.rst``,
``bench/s3front.py`` and ``bench/create_bucket.py``.
"""
from __future__ import annotations

import logging
import re
import select
import socket
import threading
from typing import Callable, Optional
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from qcompute._objects import bucket_name_problem

__all__ = ["S3Front"]

log = logging.getLogger(__name__)

_HEAD_LIMIT = 64 * 1024
_CHUNK = 1024 * 1024
_IDLE_SECONDS = 60.0  # a client connection waiting for its next request (SeaweedFS: 120 s)
_IO_SECONDS = 600.0  # one read or write while a request is under way
_CREATE_BUCKET_PATH = re.compile(rb"/[^/?]+/?")
_OWNED_CODES = (b"<Code>BucketAlreadyOwnedByYou</Code>", b"<Code>BucketAlreadyExists</Code>")
_INVALID_NAME = b"<Code>InvalidBucketName</Code>"
_MESSAGE = re.compile(rb"<Message>.*?</Message>", re.S)


class _Closed(Exception):
    """The peer closed the connection (or broke the protocol): drop both sides."""


class _Unreachable(Exception):
    """No connection to the upstream could be made."""


def _readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with something to read (or an EOF) within ``timeout`` seconds (poll: no
    limit on descriptor numbers, unlike select)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(timeout * 1000)}
    return [sock for sock in socks if sock.fileno() in ready]


def _still_open(sock: socket.socket) -> bool:
    """Whether an idle connection is still usable: nothing to read, not even an EOF."""
    return not _readable([sock], 0)


class _Reader:
    """Buffered reads from one socket: heads, lines, and exact byte counts relayed onward."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self._scratch = bytearray(_CHUNK)

    def _fill(self) -> bool:
        got = self.sock.recv_into(self._scratch)  # no new 1 MiB object (an mmap) per read
        if not got:
            return False
        self.buf += memoryview(self._scratch)[:got]
        return True

    def take(self, head: bytes, count: Optional[int]) -> bytes:
        """``head`` with the body's bytes already read, when the whole body is (one send for a
        small message); else ``head`` alone."""
        if count is not None and 0 < count <= len(self.buf):
            body = bytes(self.buf[:count])
            del self.buf[:count]
            return head + body
        return head

    def head(self) -> Optional[bytes]:
        """One message head, CRLF CRLF included; None on a clean close before any byte."""
        start = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", start)
            if end >= 0:
                head = bytes(self.buf[:end + 4])
                del self.buf[:end + 4]
                return head
            if len(self.buf) > _HEAD_LIMIT:
                raise _Closed("message head too large")
            start = max(0, len(self.buf) - 3)
            if not self._fill():
                if self.buf:
                    raise _Closed("connection closed inside a message head")
                return None

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end + 2])
                del self.buf[:end + 2]
                return line
            if len(self.buf) > _HEAD_LIMIT or not self._fill():
                raise _Closed("bad chunked framing")

    def relay(self, count: int, dst: socket.socket) -> None:
        """Send exactly ``count`` bytes of this stream to ``dst``."""
        if self.buf:
            taken = min(count, len(self.buf))
            dst.sendall(self.buf[:taken])
            del self.buf[:taken]
            count -= taken
        view = memoryview(self._scratch)
        while count > 0:
            got = self.sock.recv_into(view, min(count, _CHUNK))
            if not got:
                raise _Closed("connection closed inside a body")
            dst.sendall(view[:got])
            count -= got

    def relay_chunked(self, dst: socket.socket) -> None:
        """Relay a chunked body as is, framing and trailers included."""
        while True:
            line = self.line()
            dst.sendall(line)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Closed("bad chunk size") from None
            if size == 0:
                while True:
                    trailer = self.line()
                    dst.sendall(trailer)
                    if trailer == b"\r\n":
                        return
            self.relay(size + 2, dst)  # the data and its CRLF

    def relay_to_close(self, dst: socket.socket) -> None:
        if self.buf:
            dst.sendall(self.buf)
            self.buf.clear()
        view = memoryview(self._scratch)
        while True:
            got = self.sock.recv_into(view)
            if not got:
                return
            dst.sendall(view[:got])

    def read_body(self, headers: dict[bytes, bytes]) -> bytes:
        """A (small) body read whole: the error document of a CreateBucket."""
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = bytearray()
            while True:
                size = int(self.line().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.line() != b"\r\n":
                        pass
                    return bytes(body)
                while len(self.buf) < size + 2:
                    if not self._fill():
                        raise _Closed("connection closed inside a body")
                body += self.buf[:size]
                del self.buf[:size + 2]
        length = int(headers.get(b"content-length", b"0"))
        if length > _HEAD_LIMIT:
            raise _Closed("error body too large")
        while len(self.buf) < length:
            if not self._fill():
                raise _Closed("connection closed inside a body")
        whole = bytes(self.buf[:length])
        del self.buf[:length]
        return whole


def _parse(head: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
    """The start line's parts and the headers (lower-case names; repeats joined by commas)."""
    lines = head[:-4].split(b"\r\n")
    start = lines[0].split(b" ", 2)
    if len(start) < 2:
        raise _Closed("bad start line")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _Closed("bad header line")
        name = name.strip().lower()
        headers[name] = (headers[name] + b", " if name in headers else b"") + value.strip()
    return start, headers


def _length(headers: dict[bytes, bytes]) -> Optional[int]:
    """The body length: a number, -1 for chunked, None when the message says nothing."""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return -1
    if b"content-length" in headers:
        try:
            return int(headers[b"content-length"])
        except ValueError:
            raise _Closed("bad Content-Length") from None
    return None


def _wants_close(version: bytes, headers: dict[bytes, bytes]) -> bool:
    connection = headers.get(b"connection", b"").lower()
    return b"close" in connection or (version == b"HTTP/1.0" and b"keep-alive" not in connection)


def _drop_header(head: bytes, name: bytes) -> bytes:
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:]
                         if line.partition(b":")[0].strip().lower() != name]
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _created(head: bytes, bucket: bytes) -> bytes:
    """The 200 of a CreateBucket, from the 409's head (request id, date, server kept)."""
    lines = head[:-4].split(b"\r\n")
    drop = (b"content-length", b"content-type", b"transfer-encoding", b"location")
    kept = [line for line in lines[1:] if line.partition(b":")[0].strip().lower() not in drop]
    return b"\r\n".join([b"HTTP/1.1 200 OK", b"Location: " + bucket, *kept,
                         b"Content-Length: 0"]) + b"\r\n\r\n"


def _with_body(head: bytes, body: bytes) -> bytes:
    """A response read whole, sent with a Content-Length."""
    head = _drop_header(_drop_header(head, b"transfer-encoding"), b"content-length")
    return head[:-2] + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _error(status: bytes, code: str, message: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error>").encode()
    return (b"HTTP/1.1 %s\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
            % (status, len(body)) + body)


class S3Front:
    """The relay: ``start()`` binds ``host:port`` (0: a free port) in front of ``upstream_url``.

    ``make_bucket(name)`` creates a bucket SeaweedFS's CreateBucket refuses (see the module
    doc); without it such a CreateBucket is relayed as is. Every connection runs in a daemon
    thread; ``stop()`` closes the listener and every open connection.
    """

    def __init__(self, upstream_url: str, host: str = "127.0.0.1", port: int = 0,
                 make_bucket: Optional[Callable[[str], bool]] = None) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"the S3 front relays to a plain http://host:port, not {upstream_url}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.host, self.port = host, port
        self._make_bucket = make_bucket
        self._listener: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._acceptor: Optional[threading.Thread] = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        listener = socket.create_server((self.host, self.port), backlog=128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept, name="s3-front", daemon=True)
        self._acceptor.start()
        log.info("S3 front for the qarnot SDK at %s, relaying to %s:%d", self.endpoint_url,
                 *self.upstream)

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._acceptor is not None:
            self._acceptor.join(5)
        self._listener = self._acceptor = None

    def is_running(self) -> bool:
        return self._acceptor is not None and self._acceptor.is_alive()

    # -- connections ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="s3-front-conn",
                             daemon=True).start()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._open.add if add else self._open.discard)(sock)

    def _connect(self) -> _Reader:
        try:
            sock = socket.create_connection(self.upstream, timeout=30)
        except OSError as exc:
            raise _Unreachable(str(exc)) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(sock, True)
        return _Reader(sock)

    def _serve(self, client: socket.socket) -> None:
        up: Optional[_Reader] = None
        self._track(client, True)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _Reader(client)
            while not self._stopping.is_set():
                client.settimeout(_IDLE_SECONDS)
                head = reader.head()
                if head is None:
                    return
                if up is None or not _still_open(up.sock):  # SeaweedFS closes idle ones too
                    if up is not None:
                        self._track(up.sock, False)
                        up.sock.close()
                    up = self._connect()
                if not self._exchange(head, reader, up):
                    return
        except _Unreachable as exc:
            if not self._stopping.is_set():
                log.warning("S3 front: cannot reach %s:%d: %s", *self.upstream, exc)
                try:
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n")
                except OSError:
                    pass
        except (OSError, _Closed) as exc:
            log.debug("S3 front: connection ended: %s", exc)
        finally:
            for sock in (client, up.sock if up is not None else None):
                if sock is not None:
                    self._track(sock, False)
                    sock.close()

    def _exchange(self, head: bytes, reader: _Reader, up_reader: _Reader) -> bool:
        """Relay one request (its head read) and its response; False to close the connection."""
        client, upstream = reader.sock, up_reader.sock
        client.settimeout(_IO_SECONDS)
        upstream.settimeout(_IO_SECONDS)
        (method, target, *rest), headers = _parse(head)
        version = rest[0].strip() if rest else b"HTTP/1.1"
        length = _length(headers)
        expect = b"100-continue" in headers.get(b"expect", b"").lower()
        create_bucket = method == b"PUT" and _CREATE_BUCKET_PATH.fullmatch(target) is not None
        close = _wants_close(version, headers)

        if expect and not length:  # nothing to wait for: say "go on" here (see module doc)
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            head, expect = _drop_header(head, b"expect"), False
        sent = head if expect else reader.take(head, length)
        upstream.sendall(sent)
        if len(sent) > len(head):
            length = 0  # the body went with the head
        response: Optional[bytes] = None
        if expect:
            response = self._await_continue(reader, up_reader)
        if response is None:
            if length == -1:
                reader.relay_chunked(upstream)
            elif length:
                reader.relay(length, upstream)
            response = up_reader.head()
        elif length:  # a final answer before the body: the body never follows, end here
            close = True
        while True:
            if response is None:
                raise _Closed("upstream closed before answering")
            (_, status, *_), answer = _parse(response)
            if not status.startswith(b"1"):
                break
            client.sendall(response)  # 100 Continue and other interim answers
            response = up_reader.head()
        close = close or _wants_close(response.split(b" ", 1)[0], answer)

        if create_bucket and status in (b"400", b"409"):
            client.sendall(self._create_answer(response, status, up_reader.read_body(answer),
                                               target.rstrip(b"/")))
            return not close
        body_length = _length(answer)
        if method == b"HEAD" or status in (b"204", b"304"):
            client.sendall(response)
            return not close
        sent = up_reader.take(response, body_length)
        client.sendall(sent)
        if len(sent) > len(response) or body_length == 0:
            pass
        elif body_length == -1:
            up_reader.relay_chunked(client)
        elif body_length is not None:
            up_reader.relay(body_length, client)
        else:
            up_reader.relay_to_close(client)
            return False
        return not close

    def _create_answer(self, head: bytes, status: bytes, body: bytes, path: bytes) -> bytes:
        """What the client gets for a CreateBucket SeaweedFS answered 409 or 400."""
        if status == b"409" and any(code in body for code in _OWNED_CODES):
            return _created(head, path)
        if status == b"400" and _INVALID_NAME in body:
            name = path[1:].decode("latin-1")
            problem = bucket_name_problem(name)
            if problem:  # refused by Qarnot too: say why
                message = escape(f"{name!r} is not a valid bucket name: {problem}").encode()
                body = _MESSAGE.sub(lambda _: b"<Message>" + message + b"</Message>", body, 1)
            elif self._make_bucket is not None:
                try:
                    self._make_bucket(name)
                except Exception as exc:  # noqa: BLE001 - any failure: the client gets a 503
                    log.warning("S3 front: cannot create bucket %r: %s", name, exc)
                    return _error(b"503 Service Unavailable", "ServiceUnavailable",
                                  f"bucket {name!r} could not be created: try again")
                return _created(head, path)
        return _with_body(head, body)

    @staticmethod
    def _await_continue(reader: _Reader, up_reader: _Reader) -> Optional[bytes]:
        """After a head with ``Expect: 100-continue``: upstream's final answer if it comes before
        the body (the body is then never sent), else None once the body may be relayed (the
        100 is relayed here; a client that stops waiting for it sends its body anyway)."""
        while not reader.buf:
            ready = _readable([reader.sock, up_reader.sock], _IO_SECONDS)
            if not ready:
                raise _Closed("timed out waiting for 100 Continue")
            if up_reader.sock in ready:
                response = up_reader.head()
                if response is None:
                    raise _Closed("upstream closed before answering")
                if response.split(b" ", 2)[1] == b"100":
                    reader.sock.sendall(response)
                    return None
                return response
            if reader.sock in ready:
                return None
        return None
