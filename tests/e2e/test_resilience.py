"""Retries that must not duplicate work, and a server crash in the middle of a run."""
from __future__ import annotations

import re
import socket
import threading
import time

import qcompute
from qcompute import TaskState

from .conftest import ClusterProcess, host_pids_with, pid_alive


class DropFirstResponseProxy:
    """A loopback TCP proxy that forwards the first ``POST /tasks`` to the server, then drops
    the connection before the reply reaches the client: the request was done, the client saw a
    network error. Everything else passes through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.dropped = 0
        self.posts_seen = 0
        self.keys: list[bytes] = []  # the Idempotency-Key of every submit that went through
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with client, upstream:
            while True:
                request = self._read_message(client)
                if not request:
                    return
                upstream.sendall(request)
                is_submit = request.startswith(b"POST /tasks ")
                self.posts_seen += is_submit
                if is_submit:
                    key = re.search(rb"(?i)\r\nidempotency-key:\s*([^\r]+)", request)
                    self.keys.append(key.group(1) if key else b"")
                reply = self._read_message(upstream)
                if is_submit and self.dropped == 0:
                    self.dropped += 1
                    return  # the server created the task; the client never hears of it
                client.sendall(reply)

    @staticmethod
    def _read_message(sock: socket.socket) -> bytes:
        """One whole HTTP message (the headers, then Content-Length bytes of body); b"" when
        the peer closed. A message can arrive in several pieces, above all under load."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        while length and len(body) < int(length.group(1)):
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            body += chunk
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self._server.close()


def test_retried_post_creates_exactly_one_task(cluster):
    proxy = DropFirstResponseProxy(cluster.port)
    try:
        conn = qcompute.Connection(fileconf=str(cluster.config),
                                   cluster_url=f"http://127.0.0.1:{proxy.port}", retry_wait=0.05)
        tag = f"retry-{time.monotonic_ns()}"
        task = conn.create_task("retried", "docker-batch")
        task.constants["DOCKER_CMD"] = "true"
        task.tags = [tag]
        task.submit()
        assert proxy.dropped == 1 and proxy.posts_seen == 2  # it really was sent twice
        assert len(set(proxy.keys)) == 1 and proxy.keys[0], proxy.keys  # with one key
        direct = cluster.connection()
        assert [t.uuid for t in direct.tasks(tags=[tag])] == [task.uuid]
        assert task.wait(timeout=30) and task.state == TaskState.SUCCESS
    finally:
        proxy.close()


def test_server_crash_mid_run_is_reconciled(tmp_path):
    running = ClusterProcess(tmp_path / "crash", workers=2)
    running.start()
    try:
        conn = running.connection()
        marker = f"300.{time.monotonic_ns() % 10**6}"  # a sleep only this test starts
        task = conn.create_task("survivor", "docker-batch")
        # Each attempt leaves a sleeper in a session of its own, then finishes in 3 s: the first
        # attempt is cut short by the crash.
        task.constants["DOCKER_CMD"] = (f"sh -c '(setsid sleep {marker} &); echo started; "
                                        "sleep 3; echo finished'")
        task.submit()
        out, deadline = "", time.monotonic() + 20
        while "started" not in out and time.monotonic() < deadline:
            out += task.fresh_stdout()
            time.sleep(0.05)
        pids = host_pids_with(marker)
        assert len(pids) == 1 and "finished" not in out
        running.kill()  # SIGKILL: no cleanup code runs in the server
        running.start()  # same data dir and ports
        conn = running.connection()
        task = conn.retrieve_task(task.uuid)
        assert task.wait(timeout=60)
        assert task.state == TaskState.SUCCESS, task.errors
        assert task.completed_instances[0].execution_attempt_count == 2
        assert "finished" in task.stdout()
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in pids), "the first run's processes outlived the crash"
    finally:
        running.stop()
