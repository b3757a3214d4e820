"""Turnaround: the wall time of ``task.run()`` for ``echo hello``, qcompute against the official
``qarnot`` SDK on the same embedded cluster, with the bare ``subprocess.run`` floor.

Usage: ``python bench/turnaround.py [--runs 20] [--official-runs 20] [--sandbox auto|off]``.
Starts its own cluster on free loopback ports (``--sandbox off``: instances unsandboxed, to
measure what the sandbox costs) and stops it at the end. The official SDK polls every 10 s, so
its runs take about 10 s each.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402


def _timed(runs: int, once: Callable[[], None]) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


def _qcompute_run(conn) -> None:
    task = conn.create_task("echo", "docker-batch")
    task.constants["DOCKER_CMD"] = "echo hello"
    task.run()
    assert task.stdout() == "hello\n", task.stdout()


def _official_run(conn) -> None:
    task = conn.create_task("echo", "docker-batch")
    task.constants["DOCKER_CMD"] = "echo hello"
    task.run()
    assert task.stdout() == "hello\n", task.stdout()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--official-runs", type=int, default=20)
    parser.add_argument("--sandbox", choices=("auto", "off"), default="auto")
    args = parser.parse_args()

    floor = _timed(args.runs, lambda: subprocess.run(["sh", "-c", "echo hello"], check=True,
                                                     capture_output=True))
    with running_cluster(workers=2, env={"QCOMPUTE_SERVER_SANDBOX": args.sandbox}) as cluster:
        isolation = cluster.connection()._http.get("/settings").get("isolation", "?")
        conn = cluster.connection()
        _qcompute_run(conn)  # warm-up: the first run reads /settings and opens connections
        ours = _timed(args.runs, lambda: _qcompute_run(conn))
        official = []
        if args.official_runs:
            import qarnot

            official_conn = qarnot.Connection(str(cluster.config))
            official = _timed(args.official_runs, lambda: _official_run(official_conn))

    rows = [("subprocess.run floor", floor), ("qcompute task.run()", ours)]
    if official:
        rows.append(("official qarnot 2.23.0 task.run()", official))
    print(f"\ntask.run() of `echo hello` on the embedded cluster ({args.runs} runs after one "
          f"warm-up{f', official SDK {args.official_runs}' if official else ''}; 2 workers; "
          f"instances: {isolation})\n")
    print(f"| {'contender':36} | {'median s':>9} | {'min s':>7} | {'max s':>7} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for name, times in rows:
        print(f"| {name:36} | {statistics.median(times):9.3f} | {min(times):7.3f} "
              f"| {max(times):7.3f} |")
    median = statistics.median(ours)
    print(f"\nqcompute / floor: {median / statistics.median(floor):.1f}x")
    if official:
        print(f"official / qcompute: {statistics.median(official) / median:.1f}x (goal: >= 20x)")
    print(f"qcompute median {median:.3f} s (goal: < 0.3 s)")


if __name__ == "__main__":
    main()
