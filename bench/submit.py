"""Submit and dispatch: bulk-submit throughput, and how fast queued instances start.

Usage: ``python bench/submit.py [--tasks 1000] [--instances 1000,10000] [--no-official]``.

1. Bulk submit of ``--tasks`` tasks (one ``POST /tasks`` with an array), qcompute's
   ``submit_tasks`` against the official SDK's, on the same cluster: tasks accepted per second.
2. One task of N instances of ``true`` for each N in ``--instances``: the time from submit to
   the last instance starting, and the start rate. If dispatch does not grow with the queue,
   the rate is the same for every N.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402
from qcompute import TaskState  # noqa: E402


def _make(conn, count: int, tag: str) -> list:
    tasks = []
    for i in range(count):
        task = conn.create_task(f"bulk {i}", "docker-batch")
        task.constants["DOCKER_CMD"] = "true"
        task.tags = [tag]
        tasks.append(task)
    return tasks


def _bulk(conn, official_conn, count: int) -> list[tuple[str, float]]:
    rows = []
    ours = _make(conn, count, "bench-ours")
    start = time.perf_counter()
    conn.submit_tasks(ours)
    rows.append(("qcompute submit_tasks", time.perf_counter() - start))
    assert conn.wait_tasks(ours, timeout=900), "the bulk tasks did not finish"
    if official_conn is not None:
        theirs = _make(official_conn, count, "bench-official")
        start = time.perf_counter()
        official_conn.submit_tasks(theirs)
        rows.append(("official qarnot submit_tasks", time.perf_counter() - start))
        assert conn.wait_tasks([conn.retrieve_task(t.uuid) for t in theirs], timeout=900)
    return rows


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
    parser.add_argument("--instances", default="1000,10000")
    parser.add_argument("--sandbox", choices=("auto", "off"), default="auto",
                        help="off: instances unsandboxed, to measure what the sandbox costs")
    parser.add_argument("--no-official", action="store_true")
    args = parser.parse_args()
    sizes = [int(n) for n in args.instances.split(",") if n]

    with running_cluster(workers=2, env={"QCOMPUTE_SERVER_SANDBOX": args.sandbox}) as cluster:
        conn = cluster.connection()
        official = None
        if not args.no_official:
            import qarnot

            official = qarnot.Connection(str(cluster.config))
        bulk = _bulk(conn, official, args.tasks)
        dispatch = [(n, *_dispatch(conn, n)) for n in sizes]

    print(f"\nBulk submit of {args.tasks} tasks (one POST /tasks with an array)\n")
    print(f"| {'contender':30} | {'seconds':>8} | {'tasks/s':>8} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|")
    for name, seconds in bulk:
        print(f"| {name:30} | {seconds:8.3f} | {args.tasks / seconds:8.0f} |")
    if len(bulk) == 2:
        print(f"\nqcompute / official: {bulk[1][1] / bulk[0][1]:.1f}x faster")
    print(f"goal: >= 1000 tasks/s accepted (qcompute: {args.tasks / bulk[0][1]:.0f})")
    print(f"\nDispatch: one task of N instances of `true`, 2 executor slots, sandbox "
          f"{args.sandbox}\n")
    print(f"| {'instances':>9} | {'to last start s':>15} | {'starts/s':>8} | {'to end s':>8} |")
    print(f"|{'-' * 11}|{'-' * 17}|{'-' * 10}|{'-' * 10}|")
    for n, last_start, end in dispatch:
        print(f"| {n:9} | {last_start:15.1f} | {n / last_start:8.0f} | {end:8.1f} |")


if __name__ == "__main__":
    main()
