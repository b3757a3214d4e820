"""The sandbox reaper: when the server dies, so do its sandboxes, even those still starting.

bwrap's ``--die-with-parent`` arms the sandbox init's parent-death signal a few milliseconds
after bwrap clones that init. A runner killed inside that window (a server SIGKILLed while
instances start) leaves the init, and the command in its PID namespace, running: 15 of 20 inits
outlived a parent killed as soon as bwrap reported the init's pid, here, on a quiet machine.

So every bwrap a runner starts carries a tag as its ``argv[0]`` (``<cluster tag>.<worker pid>``;
the init, a clone of bwrap, keeps it), and one reaper per server, started by the executor, waits
for the end of a pipe only the server holds. At its end (the server died, or stopped) it
SIGKILLs every process whose ``argv[0]`` bears the tag; an init takes its namespace with it. The
executor does the same for one worker's tag when that worker dies alone.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["new_tag", "tagged", "kill_tagged", "Reaper", "TAG_ENV"]

TAG_ENV = "QCOMPUTE_SANDBOX_TAG"  # the worker's tag prefix (the executor's), in its environment
_ROUNDS_CLEAN = 3  # scans in a row that must find nothing (a late clone shows up in between)


def new_tag() -> str:
    """A tag no other cluster on this host uses."""
    return f"qcompute-sandbox-{secrets.token_hex(8)}"


def tagged(prefix: str) -> list[int]:
    """The pids whose ``argv[0]`` is ``prefix`` or starts with ``prefix + '.'``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if argv0 == prefix or argv0.startswith(prefix + "."):
            found.append(int(entry.name))
    return found


def kill_tagged(prefix: str, interval: float = 0.1, limit: float = 5.0) -> int:
    """SIGKILL the tagged processes until a few scans in a row find none (or ``limit``
    seconds pass); returns how many were signalled."""
    killed, clean, deadline = 0, 0, time.monotonic() + limit
    while clean < _ROUNDS_CLEAN and time.monotonic() < deadline:
        pids = tagged(prefix)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        clean = 0 if pids else clean + 1
        time.sleep(interval)
    return killed


class Reaper:
    """The reaper process of one executor: ``close()`` (or the server's death) sets it off."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        read_end, self._lifeline = os.pipe()  # not inheritable: only this process holds it
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "qcompute.server.reaper", tag], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)  # a kill of the server's process group spares it
        finally:
            os.close(read_end)

    def close(self, timeout: float = 10.0) -> None:
        """End the lifeline, then wait for the reaper's last scan."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def main() -> None:
    tag = sys.argv[1]
    while sys.stdin.buffer.read(4096):  # nobody writes: this returns at the server's end
        pass
    kill_tagged(tag)


if __name__ == "__main__":
    main()
