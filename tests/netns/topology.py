"""Hosts on this machine: network namespaces on one bridge, for tests that need real addresses.

``Topology(2).create()`` makes a "switch" namespace holding a bridge, and one namespace per host
joined to it by a veth pair (``eth0`` in the host, ``pN`` on the bridge), with ``lo`` up and an
address ``10.213.0.N/24``. The root namespace is never touched: no interface, route or address of
the machine changes, and nothing the hosts send can leave the bridge. Each host's default route
goes to the switch (``10.213.0.254``), which forwards nothing (a new namespace does not): it is
there for the tools that need a gateway, such as pasta (whose sandboxed instances reach the
other hosts through it) and Ray (which finds its address from the default route).

A thread runs in a host's namespace with ``host.entered()``: the sockets it opens and the
processes it starts are that host's. ``destroy()`` kills every process of the namespaces (and
their descendants, which may sit in namespaces of their own, like sandboxed instances), by PID,
then deletes the namespaces, which deletes the veths and the bridge. Needs root and ``ip``
(Debian's ``iproute2``).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

__all__ = ["Host", "Topology", "TopologyError"]

SUBNET = "10.213.0"  # /24; checked against the machine's own addresses and routes at create
_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


class TopologyError(RuntimeError):
    """The namespaces could not be built (not root, no ``ip``, no netns support)."""


def ip(*args: str) -> str:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise TopologyError("the ip command is missing: apt-get install iproute2") from None
    if done.returncode:
        raise TopologyError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


class Host:
    """One namespace: ``name``, its ``address`` on the bridge, its link ``eth0``."""

    link = "eth0"

    def __init__(self, name: str, address: str, gateway: str) -> None:
        self.name, self.address, self.gateway = name, address, gateway

    @contextlib.contextmanager
    def entered(self) -> Iterator["Host"]:
        """This thread in the host's namespace meanwhile (a network namespace is per thread)."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        here = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(here)
            try:
                yield self
            finally:
                _setns(back)
        finally:
            os.close(here)
            os.close(back)

    def set_link(self, up: bool) -> None:
        """Plug or unplug the host's cable (its end of the veth). Unplugged, the kernel drops
        the default route: plugged again, it is put back (pasta needs it)."""
        ip("-n", self.name, "link", "set", self.link, "up" if up else "down")
        if up:
            ip("-n", self.name, "route", "replace", "default", "via", self.gateway)

    def pids(self) -> set[int]:
        """The processes in the namespace (not those that made namespaces of their own)."""
        return {int(pid) for pid in ip("netns", "pids", self.name).split()}

    def kill_all(self) -> None:
        """SIGKILL every process of the namespace and their descendants, by PID."""
        for _ in range(5):
            doomed = _with_descendants(self.pids())
            if not doomed:
                return
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.address})"


def _with_descendants(pids: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class Topology:
    """``size`` hosts on a bridge; names end with a random suffix, so runs never meet."""

    def __init__(self, size: int = 2, subnet: str = SUBNET) -> None:
        suffix = secrets.token_hex(3)
        self.subnet = subnet
        self.switch = f"qcsw-{suffix}"
        self.gateway = f"{subnet}.254"  # the switch's own address: it forwards nothing
        self.hosts = [Host(f"qch{n}-{suffix}", f"{subnet}.{n}", self.gateway)
                      for n in range(1, size + 1)]
        self._made: list[str] = []

    def create(self) -> "Topology":
        if os.geteuid() != 0:
            raise TopologyError("network namespaces need root (the CI runs as root)")
        mine = f"{self.subnet}."
        if mine in ip("-4", "addr") or mine in ip("-4", "route"):
            raise TopologyError(f"{self.subnet}.0/24 is in use on this machine: pick another")
        try:
            self._add_namespace(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "addr", "add", f"{self.gateway}/24", "dev", "br0")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for n, host in enumerate(self.hosts, 1):
                self._add_namespace(host.name)
                ip("link", "add", host.link, "netns", host.name, "type", "veth",
                   "peer", "name", f"p{n}", "netns", self.switch)
                ip("-n", self.switch, "link", "set", f"p{n}", "master", "br0", "up")
                ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", host.link)
                host.set_link(True)
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def destroy(self) -> None:
        """Kill what runs in the hosts, then delete every namespace made (veths and bridge go
        with them). Safe to call twice, and after a partial ``create``."""
        for host in self.hosts:
            if host.name in self._made:
                host.kill_all()
        for name in reversed(self._made):
            with contextlib.suppress(TopologyError):
                ip("netns", "del", name)
        self._made = []
