"""The instance sandbox's cost per instance, measured where it is paid: one instance of
``echo hello`` through the runner, in-process (no server, no S3), unsandboxed, in bubblewrap with
no network, and in bubblewrap in the worker's network namespace (the default).

Usage: ``python bench/sandbox.py [--runs 50]``. One warm-up run per mode, then ``--runs`` runs;
the worker's sandbox (its /etc files and its network namespace with pasta) is set up once, as a
runner worker does at start, and that set-up time is printed apart.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import conditions, rotated  # noqa: E402
from qcompute.server.executors.base import InstanceSpec  # noqa: E402
from qcompute.server.runner import run_instance  # noqa: E402
from qcompute.server.sandbox import Sandbox, SandboxConfig  # noqa: E402


def _once(sandbox, root: str, n: int, network: bool) -> float:
    spec = InstanceSpec(task_uuid="bench", instance_id=0, attempt=n, command="echo hello",
                        env={}, workdir=os.path.join(root, str(n)), network=network)
    started = time.perf_counter()
    finished = run_instance(spec, lambda event: None, threading.Event(), sandbox=sandbox)
    assert finished.exit_code == 0, finished
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    sandbox = Sandbox(SandboxConfig(enabled=True, network=True, forward_ports=(1,))).start()
    setup = time.perf_counter() - started
    modes = {"unsandboxed": (None, False), "bubblewrap, no network": (sandbox, False),
             "bubblewrap, worker's network": (sandbox, True)}
    rows: dict[str, list[float]] = {name: [] for name in modes}
    try:
        with tempfile.TemporaryDirectory() as root:
            counter = iter(range(10**9))
            for box, network in modes.values():
                _once(box, root, next(counter), network)  # warm-up
            for i in range(args.runs):  # one run of each mode in turn, the order rotated
                for name in rotated(list(modes), i):
                    box, network = modes[name]
                    rows[name].append(_once(box, root, next(counter), network))
    finally:
        sandbox.close()
    conditions("The sandbox's cost: one instance of `echo hello` through the runner, "
               "in-process", {"runs": f"{args.runs} per mode after one warm-up, one run of "
                                      f"each mode in turn, the order rotated; cgroups per "
                                      f"instance where writable"})
    print()
    print(f"| {'mode':30} | {'median ms':>9} | {'min ms':>7} | {'p90 ms':>7} | {'added ms':>8} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    base = statistics.median(rows["unsandboxed"])
    for name, times in rows.items():
        times.sort()
        median = statistics.median(times)
        print(f"| {name:30} | {median * 1e3:9.2f} | {times[0] * 1e3:7.2f} "
              f"| {times[int(len(times) * 0.9)] * 1e3:7.2f} | {(median - base) * 1e3:8.2f} |")
    print(f"\nonce per runner worker: sandbox set-up (etc files, network namespace, pasta) "
          f"{setup * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
