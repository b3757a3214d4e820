"""One runner worker, driven as the LocalExecutor drives it: what one instance costs it.

Usage: ``python bench/runner_worker.py [--instances 200] [--command true] [--sandbox on|off]
[--no-network] [--warmup 20]``.

Starts ``python -m qcompute.server.runner --serve`` with the environment the LocalExecutor
gives it (the sandbox config the server uses by default: bubblewrap, the slot's network through
pasta, a process cap), then sends one spec at a time and waits for its Finished. Prints, per
instance: the wall time from the spec written to ACCEPTED, to the ``running`` phase and to
Finished (medians and p90), and CPU time per instance: the worker's own (from /proc), and, where
a cgroup can be made for the worker, everything the instance costs (the worker, bwrap, the
sandbox's init, the command: the cgroup's CPU counter). CPU times are what other load distorts
least; the wall times come with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcompute.server.executors.base import InstanceSpec  # noqa: E402
from qcompute.server.runner import ACCEPTED, HEARTBEAT_ENV, SANDBOX_ENV  # noqa: E402
from qcompute.server.runner_telemetry import InstanceCgroup  # noqa: E402
from qcompute.server.sandbox import SandboxConfig  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _own_cpu(pid: int) -> float:
    """The process's own CPU seconds (its threads, not its children)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _enter(cgroup: InstanceCgroup) -> None:
    for path in set(cgroup.dirs.values()):
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))


def _total_cpu(cgroup: Optional[InstanceCgroup]) -> float:
    """CPU seconds of everything in the worker's cgroup (its instances' cgroups are in it)."""
    seconds = cgroup.cpu_seconds() if cgroup else None
    return seconds if seconds is not None else float("nan")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--command", default="true")
    parser.add_argument("--sandbox", choices=("on", "off"), default="on")
    parser.add_argument("--no-network", action="store_true")
    args = parser.parse_args()

    root = Path(__file__).resolve().parents[1]
    config = SandboxConfig(enabled=args.sandbox == "on", network=not args.no_network,
                           forward_ports=(1,), max_pids=4096)  # as settings.sandbox_config
    env = {**os.environ, "PYTHONPATH": str(root), SANDBOX_ENV: config.to_json(),
           HEARTBEAT_ENV: "15.0"}
    work = tempfile.mkdtemp(prefix="qcompute-bench-work-")
    cgroup = InstanceCgroup.create(0, 0)  # the worker's: its instances' are made inside
    proc = subprocess.Popen([sys.executable, "-m", "qcompute.server.runner", "--serve"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                            preexec_fn=(lambda: _enter(cgroup)) if cgroup else None)
    assert proc.stdin is not None and proc.stdout is not None
    lines = iter(proc.stdout.readline, b"")
    rows: list[tuple[float, float, float, float]] = []
    cpu_start = (0.0, 0.0)
    try:
        for i in range(args.warmup + args.instances):
            if i == args.warmup:
                cpu_start = (_own_cpu(proc.pid), _total_cpu(cgroup))
            spec = InstanceSpec(task_uuid="bench", instance_id=i, attempt=0,
                                command=args.command, env={"INSTANCE_ID": str(i)},
                                workdir=os.path.join(work, "bench", f"{i}-0"))
            sent = time.perf_counter()
            proc.stdin.write((spec.to_json() + "\n").encode())
            accepted = running = 0.0
            for line in lines:
                now = time.perf_counter()
                if line.strip() == ACCEPTED.encode():
                    accepted = now
                    continue
                event = json.loads(line)
                if event["kind"] == "phase" and event["phase"] == "running":
                    running = now
                elif event["kind"] == "finished":
                    if event.get("error") or event.get("exit_code") != 0:
                        raise SystemExit(f"instance {i} failed: {event}")
                    if i >= args.warmup:
                        rows.append((accepted - sent, running - sent, now - sent,
                                     event["wall_time_sec"]))
                    break
        cpu_end = (_own_cpu(proc.pid), _total_cpu(cgroup))
    finally:
        proc.stdin.close()
        proc.wait(30)
        if cgroup is not None:
            cgroup.remove()
    own = (cpu_end[0] - cpu_start[0]) / args.instances * 1000
    total = (cpu_end[1] - cpu_start[1]) / args.instances * 1000
    print(f"runner worker, {args.instances} instances of {args.command!r} one at a time after "
          f"{args.warmup} warm-up; sandbox {args.sandbox}, network "
          f"{'off' if args.no_network else 'on'}; load average {os.getloadavg()[0]:.2f}")
    print(f"| {'ms per instance':28} | {'median':>7} | {'p90':>7} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 9}|")
    for name, column in (("spec written -> ACCEPTED", 0), ("spec written -> running", 1),
                         ("spec written -> Finished", 2), ("Finished.wall_time_sec", 3)):
        values = [row[column] * 1000 for row in rows]
        print(f"| {name:28} | {statistics.median(values):7.2f} | {_quantile(values, 0.9):7.2f} |")
    print(f"CPU per instance: worker {own:.2f} ms; everything (worker, bwrap, the sandbox's "
          f"init, the command) {total:.2f} ms")


if __name__ == "__main__":
    main()
