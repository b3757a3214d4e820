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
from bench._report import cluster_facts, conditions, rotated  # noqa: E402


FLOOR, OURS, THEIRS = ("subprocess.run floor", "qcompute task.run()",
                       "official qarnot 2.23.0 task.run()")


def _interleaved(contenders: dict[str, tuple[int, Callable[[], None]]]) -> dict[str, list[float]]:
    """Time each contender's ``(runs, once)``, one run of each in turn, the order rotated."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(max(runs for runs, _ in contenders.values())):
        for name in rotated(list(contenders), i):
            runs, once = contenders[name]
            if len(times[name]) < runs:
                start = time.perf_counter()
                once()
                times[name].append(time.perf_counter() - start)
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

    with running_cluster(workers=2, env={"QCOMPUTE_SERVER_SANDBOX": args.sandbox}) as cluster:
        facts = cluster_facts(cluster.url)
        conn = cluster.connection()
        _qcompute_run(conn)  # warm-up: the first run reads /settings and opens connections
        contenders = {
            FLOOR: (args.runs, lambda: subprocess.run(["sh", "-c", "echo hello"], check=True,
                                                      capture_output=True)),
            OURS: (args.runs, lambda: _qcompute_run(conn))}
        if args.official_runs:
            import qarnot

            official_conn = qarnot.Connection(str(cluster.config))
            _official_run(official_conn)  # warm-up, as for qcompute
            contenders[THEIRS] = (args.official_runs, lambda: _official_run(official_conn))
        times = _interleaved(contenders)

    ours, official = times[OURS], times.get(THEIRS, [])
    conditions("Turnaround: task.run() of `echo hello` on the embedded cluster", {
        **facts, "runs": f"{args.runs} after one warm-up each"
                         + (f"; official SDK {args.official_runs}" if official else "")
                         + "; one run of each contender in turn, the order rotated"})
    print()
    print(f"| {'contender':36} | {'median s':>9} | {'min s':>7} | {'max s':>7} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for name, runs in times.items():
        print(f"| {name:36} | {statistics.median(runs):9.3f} | {min(runs):7.3f} "
              f"| {max(runs):7.3f} |")
    median = statistics.median(ours)
    print(f"\nqcompute / floor: {median / statistics.median(times[FLOOR]):.1f}x")
    if official:
        print(f"official / qcompute: {statistics.median(official) / median:.1f}x (goal: >= 20x)")
    print(f"qcompute median {median:.3f} s (goal: < 0.3 s)")


if __name__ == "__main__":
    main()
