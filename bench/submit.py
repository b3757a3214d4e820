"""Submit and dispatch: bulk-submit throughput, and how fast queued instances start.

Usage: ``python bench/submit.py [--tasks 1000] [--rounds 3] [--instances 1000,10000]
[--no-official]``.

1. Bulk submit of ``--tasks`` tasks (one ``POST /tasks`` with an array), qcompute's
   ``submit_tasks`` against the official SDK's, on the same cluster: tasks accepted per second,
   the median of ``--rounds`` rounds with the SDKs' order rotated.
2. One task of N instances of ``true`` for each N in ``--instances``: the time from submit to
   the last instance starting, and the start rate. If dispatch does not grow with the queue,
   the rate is the same for every N.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402
from bench._report import cluster_facts, conditions, rotated  # noqa: E402
from qcompute import TaskState  # noqa: E402


def _make(conn, count: int, tag: str) -> list:
    tasks = []
    for i in range(count):
        task = conn.create_task(f"bulk {i}", "docker-batch")
        task.constants["DOCKER_CMD"] = "true"
        task.tags = [tag]
        tasks.append(task)
    return tasks


def _bulk(conn, official_conn, count: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each bulk submit of ``count`` tasks, ``rounds`` times per SDK, the order
    rotated (each round's tasks run to their end before the next round)."""
    submitters = {"qcompute submit_tasks": conn}
    if official_conn is not None:
        submitters["official qarnot submit_tasks"] = official_conn
    times: dict[str, list[float]] = {name: [] for name in submitters}
    for i in range(rounds):
        for name in rotated(list(submitters), i):
            tasks = _make(submitters[name], count, f"bench-{i}")
            start = time.perf_counter()
            submitters[name].submit_tasks(tasks)
            times[name].append(time.perf_counter() - start)
            if submitters[name] is not conn:  # the official SDK's tasks, as qcompute's
                tasks = [conn.retrieve_task(t.uuid) for t in tasks]
            assert conn.wait_tasks(tasks, timeout=900), "the bulk tasks did not finish"
    return times


def _dispatch(conn, instances: int) -> tuple[float, float]:
    """Seconds from submit to the last instance's start, and to the task's end (the server's
    instance start times, so the client does not poll a large document meanwhile)."""
    task = conn.create_task(f"{instances} instances", "docker-batch", instances)
    task.constants["DOCKER_CMD"] = "true"
    task.submit()
    submitted = task.creation_date
    assert conn.wait_tasks([task], timeout=3600), "the task did not finish"
    starts = [_parse(i["startedAt"]) for i in task._data["completedInstances"]]
    ends = [_parse(i["endedAt"]) for i in task._data["completedInstances"]]
    assert len(starts) == instances and task.state == TaskState.SUCCESS
    return ((max(starts) - submitted).total_seconds(), (max(ends) - submitted).total_seconds())


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="bulk submits per SDK (median)")
    parser.add_argument("--instances", default="1000,10000")
    parser.add_argument("--sandbox", choices=("auto", "off"), default="auto",
                        help="off: instances unsandboxed, to measure what the sandbox costs")
    parser.add_argument("--no-official", action="store_true")
    args = parser.parse_args()
    sizes = [int(n) for n in args.instances.split(",") if n]

    with running_cluster(workers=2, env={"QCOMPUTE_SERVER_SANDBOX": args.sandbox}) as cluster:
        facts = cluster_facts(cluster.url)
        conn = cluster.connection()
        official = None
        if not args.no_official:
            import qarnot

            official = qarnot.Connection(str(cluster.config))
        bulk = _bulk(conn, official, args.tasks, args.rounds)
        dispatch = [(n, *_dispatch(conn, n)) for n in sizes]

    conditions("Submit and dispatch", {
        **facts, "bulk submit": f"{args.tasks} tasks, median of {args.rounds} rounds, the SDKs' "
                                f"order rotated each round",
        "dispatch": f"one task of each of {args.instances} instances"})
    print(f"\nBulk submit of {args.tasks} tasks (one POST /tasks with an array)\n")
    print(f"| {'contender':30} | {'median s':>8} | {'tasks/s':>8} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|")
    medians = {name: statistics.median(times) for name, times in bulk.items()}
    for name, seconds in medians.items():
        print(f"| {name:30} | {seconds:8.3f} | {args.tasks / seconds:8.0f} |")
    ours = medians["qcompute submit_tasks"]
    if len(medians) == 2:
        print(f"\nqcompute / official: {medians['official qarnot submit_tasks'] / ours:.1f}x "
              f"faster")
    print(f"goal: >= 1000 tasks/s accepted (qcompute: {args.tasks / ours:.0f})")
    print(f"\nDispatch: one task of N instances of `true`, "
          f"{facts['executor slots (workers)']} executor slots\n")
    print(f"| {'instances':>9} | {'to last start s':>15} | {'starts/s':>8} | {'to end s':>8} |")
    print(f"|{'-' * 11}|{'-' * 17}|{'-' * 10}|{'-' * 10}|")
    for n, last_start, end in dispatch:
        print(f"| {n:9} | {last_start:15.1f} | {n / last_start:8.0f} | {end:8.1f} |")


if __name__ == "__main__":
    main()
