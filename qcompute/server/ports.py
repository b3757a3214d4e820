"""The ports a cluster binds, checked before anything is set up: which one is taken, by whom,
and a free one to use instead.

Checked: the API port, and with embedded storage the S3 port with its gRPC twin (+10000) and a
configured S3 front port. SeaweedFS's other ports and a front port left at 0 are picked free at
start, so they cannot clash.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .settings import ServerSettings
from .storage.seaweed import GRPC_OFFSET

__all__ = ["Port", "cluster_ports", "taken_ports", "bindable", "holder"]


@dataclass(frozen=True)
class Port:
    """One port the cluster binds, and how an operator changes it."""

    number: int
    what: str  # "the API port"
    option: str  # "--port": the option (or variable) that sets it
    host: str = "127.0.0.1"
    twin: bool = False  # its gRPC port (+10000) must be free too

    def free(self) -> bool:
        return bindable(self.host, self.number) and (
            not self.twin or bindable(self.host, self.number + GRPC_OFFSET))


def bindable(host: str, port: int) -> bool:
    """Whether a listening socket can take ``host:port`` now (SO_REUSEADDR, as uvicorn and Go
    set it, so a port in TIME_WAIT counts as free)."""
    if not 0 < port < 65536:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cluster_ports(settings: ServerSettings) -> list[Port]:
    ports = [Port(settings.port, "the API port", "--port", settings.host)]
    if settings.storage == "embedded":
        # beyond loopback, the relay takes s3_port on `host`; SeaweedFS, a loopback port pair
        # of its own (storage/relay.py)
        public = settings.beyond_loopback
        host = settings.host if public else "127.0.0.1"
        ports.append(Port(settings.s3_port, "the S3 port", "--s3-port", host, twin=not public))
        if settings.s3_front and settings.s3_front_port:
            ports.append(Port(settings.s3_front_port, "the S3 front port",
                              "QCOMPUTE_SERVER_S3_FRONT_PORT=", host))
    return ports


def taken_ports(settings: ServerSettings) -> list[str]:
    """One sentence per taken port: ``the API port 8801 is taken (by another qcompute cluster
    at /srv/qc, pid 4242); use --port 8802``. Empty when every port is free."""
    ports = cluster_ports(settings)
    busy = {n for p in ports for n in (p.number, p.number + GRPC_OFFSET * p.twin)}
    problems = []
    for port in ports:
        if port.free():
            continue
        taken = f"{port.number}" + (f" (or its gRPC port {port.number + GRPC_OFFSET})"
                                    if port.twin else "")
        spare = _free_near(port, busy)
        busy |= {spare, spare + GRPC_OFFSET * port.twin}
        joint = "" if port.option.endswith("=") else " "
        problems.append(f"{port.what} {taken} is taken{holder(port.number)}; "
                        f"use {port.option}{joint}{spare}")
    return problems


def _free_near(port: Port, avoid: set[int]) -> int:
    """The first free port above ``port`` (with its twin, if it needs one)."""
    top = 65536 - GRPC_OFFSET * port.twin
    for number in [*range(port.number + 1, top), *range(1024, port.number)]:
        candidate = Port(number, port.what, port.option, port.host, port.twin)
        if number not in avoid and (number + GRPC_OFFSET) not in avoid and candidate.free():
            return number
    raise RuntimeError(f"no free port for {port.what}")


def holder(port: int) -> str:
    """`` (by another qcompute cluster at DIR, pid N)`` or `` (by pid N, NAME)`` for the process
    listening on ``port``, when this user may see it; else empty."""
    try:
        import psutil

        pid = next((c.pid for c in psutil.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                    and c.pid), None)
        if pid is None:
            return ""
        process = psutil.Process(pid)
        for candidate in [process, *process.parents()]:
            data_dir = _cluster_data_dir(candidate.cmdline())
            if data_dir is not None:
                return f" (by another qcompute cluster at {data_dir}, pid {candidate.pid})"
        return f" (by pid {pid}, {process.name()})"
    except Exception:  # noqa: BLE001 - who holds it is a courtesy: never fail the check on it
        return ""


def _cluster_data_dir(argv: list[str]) -> Optional[str]:
    """The data dir of a ``qcompute server`` command line, as ``qcompute up`` starts it."""
    if "server" not in argv or not any(Path(arg).name == "qcompute" for arg in argv):
        return None
    if "--data-dir" in argv[:-1]:
        return argv[argv.index("--data-dir") + 1]
    return "its default data dir"
