"""A TCP relay: the embedded S3 on an address beyond loopback, SeaweedFS staying on loopback.

``weed mini`` binds every component (master, volume, filer, admin, S3) to one ``-ip.bind``
(``weed mini -h``, 4.48): binding it beyond loopback would expose the filer, whose HTTP API
reads and writes every file without authentication. So when the server listens beyond loopback,
SeaweedFS keeps 127.0.0.1 and this relay listens on the server's address, copying bytes both
ways to the loopback S3 port. It does not parse HTTP: requests arrive as sent (Host header and
SigV4 signatures included) and S3 checks them as if it were reached directly. One thread per
direction of each connection; a connection the upstream refuses is closed at once (SeaweedFS
restarting: clients retry).
"""
from __future__ import annotations

import logging
import socket
import threading
from typing import Optional

__all__ = ["TcpRelay"]

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


class TcpRelay:
    """``start()`` listens on ``host:port`` and relays each connection to ``upstream``."""

    def __init__(self, host: str, port: int, upstream: tuple[str, int]) -> None:
        self.host, self.port, self.upstream = host, port, upstream
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.create_server((self.host, self.port), family=family, backlog=128)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, args=(self._listener,),
                                          daemon=True, name=f"s3-relay-{self.port}")
        self._acceptor.start()
        log.info("S3 relay on %s:%d to %s:%d", self.host, self.port, *self.upstream)

    def stop(self) -> None:
        """Stop listening (a shutdown wakes the blocked accept, which a close alone does not)
        and cut every relayed connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.clear()

    def is_running(self) -> bool:
        return self._acceptor is not None and self._acceptor.is_alive()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # shut down by stop()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """Connect to the upstream, then copy client to upstream here and back in a second
        thread."""
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError as exc:
            log.warning("S3 relay: cannot reach %s:%d: %s", *self.upstream, exc)
            client.close()
            return
        upstream.settimeout(None)
        pair = (client, upstream)
        for sock in pair:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._listener is None:  # stopped meanwhile
                for sock in pair:
                    sock.close()
                return
            self._open |= set(pair)
        ended: list[int] = []  # one entry per direction that ended
        threading.Thread(target=self._pipe, args=(upstream, client, pair, ended),
                         daemon=True).start()
        self._pipe(client, upstream, pair, ended)

    def _pipe(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, ...],
              ended: list[int]) -> None:
        """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``; the second direction to
        end closes both sockets (an error ends both directions)."""
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self._lock:
            ended.append(1)
            if len(ended) < 2:
                return
            self._open -= set(pair)
        for sock in pair:
            sock.close()
