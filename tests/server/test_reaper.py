"""The sandbox reaper: a sandbox whose bwrap lost its parent before arming the parent-death
signal is ended when the server's lifeline ends, and only tagged processes are touched."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

from qcompute.server.reaper import Reaper, kill_tagged, new_tag, tagged

# A "worker" that starts one tagged sandbox whose init never arms a parent-death signal (no
# --die-with-parent: the state of an init in its first milliseconds), prints the init's pid,
# then waits to be killed.
_WORKER = textwrap.dedent("""
    import os, subprocess, sys, time
    tag, bwrap = sys.argv[1], sys.argv[2]
    read, write = os.pipe()
    subprocess.Popen([f"{tag}.{os.getpid()}", "--unshare-pid", "--new-session",
                      "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                      "--info-fd", str(write), "sleep", "300"],
                     executable=bwrap, pass_fds=(write,), start_new_session=True)
    os.close(write)
    info = b""
    while b"}" not in info:
        info += os.read(read, 4096)
    print(info[:info.index(b"}") + 1].decode().replace("\\n", " "), flush=True)
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_the_reaper_ends_the_sandboxes_a_dead_worker_left_and_nothing_else():
    tag = new_tag()
    reaper = Reaper(tag)
    bystander = subprocess.Popen([f"{new_tag()}.1", "300"], executable="sleep")
    inits = []
    try:
        for _ in range(3):
            worker = subprocess.Popen([sys.executable, "-c", _WORKER, tag, shutil.which("bwrap")],
                                      stdout=subprocess.PIPE, text=True)
            inits.append(json.loads(worker.stdout.readline())["child-pid"])
            worker.kill()
            worker.wait()
        time.sleep(0.3)
        assert all(_alive(pid) for pid in inits)  # orphaned, as bwrap leaves them
        assert set(inits) <= set(tagged(tag))
        reaper.close()  # the server's end
        assert _until(lambda: not any(_alive(pid) for pid in inits))
        assert bystander.poll() is None  # another tag: untouched
    finally:
        reaper.close()
        for pid in inits:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        bystander.kill()
        bystander.wait()


def test_kill_tagged_takes_one_workers_tag_only():
    tag = new_tag()
    mine = subprocess.Popen([f"{tag}.11", "300"], executable="sleep")
    other_worker = subprocess.Popen([f"{tag}.12", "300"], executable="sleep")
    try:
        assert kill_tagged(f"{tag}.11", interval=0.01) == 1
        assert mine.wait(5) == -signal.SIGKILL
        assert other_worker.poll() is None
        assert tagged(tag) == [other_worker.pid]
    finally:
        for proc in (mine, other_worker):
            proc.kill()
            proc.wait()
