"""Turnaround: the wall time of ``task.run()`` for ``echo hello``, qcompute against the official
``qarnot`` SDK on the same embedded cluster, with the bare ``subprocess.run`` floor.

Usage: ``python bench/turnaround.py [--runs 20] [--official-runs 20] [--sandbox auto|off]``.
Starts its own cluster on free loopback ports (``--sandbox off``: instances unsandboxed, to
measure what the sandbox costs) and stops it at the end. The official SDK polls every 10 s, so
its runs take about 10 s each.

Then, where the time of a qcompute run goes: a second qcompute contender calls ``submit()``,
``wait()`` and ``download_results()`` one by one (the client's phases), and the runs of both
qcompute contenders are split into phases by the cluster's own timestamps
(``GET /tasks/{uuid}/timeline``, read after all runs) between the client's ``time.time()``
before it submits and when it sees the final state.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402
from bench._report import cluster_facts, conditions, rotated  # noqa: E402


FLOOR, OURS, PHASED, THEIRS = ("subprocess.run floor", "qcompute task.run()",
                               "qcompute submit+wait+download",
                               "official qarnot 2.23.0 task.run()")
# the cluster's steps (GET /tasks/{uuid}/timeline), in order, and how the table names them
STEPS = {"submitted": "accepted", "dispatched": "dispatched",
         "handedOver": "handed to the executor", "runnerStarted": "runner started",
         "commandStarted": "command started", "sandboxReady": "sandbox ready",
         "commandEnded": "command ended", "resultsUploaded": "results uploaded",
         "runnerEnded": "runner ended", "ended": "ended (recorded)"}


@dataclass
class Trace:
    """One qcompute run: its task, and the client's own clock around it."""

    task: Any
    sent: float  # time.time() just before submitting
    seen: float  # time.time() once the client saw the final state
    client: dict[str, float] = field(default_factory=dict)  # the SDK calls' durations
    steps: dict[str, float] = field(default_factory=dict)  # the cluster's (read after the runs)

    def read_steps(self) -> None:
        timeline = self.task.timeline()
        [instance] = timeline["instances"]
        self.steps = {"submitted": timeline["submitted"], **instance["timeline"]}


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


def _echo_task(conn):
    task = conn.create_task("echo", "docker-batch")
    task.constants["DOCKER_CMD"] = "echo hello"
    return task


def _qcompute_run(conn, traces: list[Trace]) -> None:
    task = _echo_task(conn)
    sent = time.time()
    task.run()
    traces.append(Trace(task, sent, time.time()))
    assert task.stdout() == "hello\n", task.stdout()


def _qcompute_phases(conn, traces: list[Trace], results_dir: str) -> None:
    """The steps of ``run()`` one by one, and ``download_results()`` (the task has no result
    bucket: it refreshes the task and downloads nothing)."""
    task = _echo_task(conn)
    sent = time.time()
    task.submit()
    submitted = time.time()
    task.wait()
    seen = time.time()
    task.download_results(results_dir)
    traces.append(Trace(task, sent, seen, {"submit()": submitted - sent, "wait()": seen - submitted,
                                           "download_results()": time.time() - seen}))
    assert task.stdout() == "hello\n", task.stdout()


def _phases(trace: Trace) -> dict[str, float]:
    """A run's phases (seconds) between consecutive steps it reached, client ones included."""
    marks = [("submit request", trace.sent),
             *((STEPS[name], trace.steps[name]) for name in STEPS if name in trace.steps),
             ("final state seen by the client", trace.seen)]
    return {f"{a} -> {b}": end - start for (a, start), (b, end) in zip(marks, marks[1:])}


def _print_phases(traces: list[Trace], client: list[Trace]) -> None:
    """Each phase's median, min and max (ms) over the runs, in the order of the steps."""
    phases: dict[str, list[float]] = {}
    for trace in traces:
        for name, seconds in _phases(trace).items():
            phases.setdefault(name, []).append(seconds * 1000)
    print(f"\nWhere a qcompute run's time goes: {len(traces)} runs ({OURS} and {PHASED}),"
          " phases from the cluster's timestamps (GET /tasks/{uuid}/timeline) and the client's"
          " clock (same host)")
    print(f"| {'phase':52} | {'median ms':>9} | {'min ms':>7} | {'max ms':>7} | {'runs':>4} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 6}|")
    for name, values in phases.items():
        print(f"| {name:52} | {statistics.median(values):9.1f} | {min(values):7.1f} "
              f"| {max(values):7.1f} | {len(values):4} |")
    totals = [(t.seen - t.sent) * 1000 for t in traces]
    print(f"| {'total: submit request -> final state seen':52} | "
          f"{statistics.median(totals):9.1f} | {min(totals):7.1f} | {max(totals):7.1f} "
          f"| {len(totals):4} |")
    print(f"\nThe client's calls in {PHASED} ({len(client)} runs):")
    for name in ("submit()", "wait()", "download_results()"):
        values = [t.client[name] * 1000 for t in client]
        print(f"  {name:20} median {statistics.median(values):6.1f} ms  (min "
              f"{min(values):.1f}, max {max(values):.1f})")


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

    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(
            running_cluster(workers=2, env={"QCOMPUTE_SERVER_SANDBOX": args.sandbox}))
        facts = cluster_facts(cluster.url)
        conn = cluster.connection()
        run_traces: list[Trace] = []
        phased_traces: list[Trace] = []
        results_dir = stack.enter_context(tempfile.TemporaryDirectory())
        _qcompute_run(conn, [])  # warm-up: the first run reads /settings and opens connections
        _qcompute_phases(conn, [], results_dir)
        contenders = {
            FLOOR: (args.runs, lambda: subprocess.run(["sh", "-c", "echo hello"], check=True,
                                                      capture_output=True)),
            OURS: (args.runs, lambda: _qcompute_run(conn, run_traces)),
            PHASED: (args.runs, lambda: _qcompute_phases(conn, phased_traces, results_dir))}
        if args.official_runs:
            import qarnot

            official_conn = qarnot.Connection(str(cluster.config))
            _official_run(official_conn)  # warm-up, as for qcompute
            contenders[THEIRS] = (args.official_runs, lambda: _official_run(official_conn))
        times = _interleaved(contenders)
        for trace in run_traces + phased_traces:  # read once every run is over
            trace.read_steps()

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
    _print_phases(run_traces + phased_traces, phased_traces)


if __name__ == "__main__":
    main()
