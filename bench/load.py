"""Load: many concurrent clients, each submitting tasks one by one and waiting on them.

Usage: ``python bench/load.py [--clients 50] [--tasks 100] [--rounds 2] [--workers N]
[--sandbox auto|off] [--wait longpoll|poll] [--url URL --token TOKEN [--server-pid PID]]``.

Starts its own embedded cluster on free loopback ports (stopped by PID at the end), or targets
an existing one with ``--url``/``--token``. Each round, ``--clients`` processes (each its own
``qcompute.Connection``, started together) submit ``--tasks`` tasks each with ``task.submit()``
(``true`` and ``echo`` in turn), then wait until all are final: ``Connection.wait_tasks``
(the server's long poll, the SDK's way), or with ``--wait poll`` a ``GET /tasks/{uuid}`` of
each unfinished task every ``--poll-interval`` seconds (the official SDK's way). Every API call
is timed where the SDK sends it (``HttpClient.request``); retries are off by default, so each
failure counts.

Prints per round: the errors (count and the first few), the p50/p99/max latency of each kind of
route, the throughput, and the server process's RSS (``/proc/<pid>/status``) before the first
round and after each; then the goals (0 errors, p99 <= 200 ms on the routes the server answers
at once, no RSS growth from one round to the next). Long polls (held by the server until the
tasks end) are shown, but are not latencies.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402
from bench._report import cluster_facts, conditions, percentile, rss_kb  # noqa: E402

HELD = "(held)"  # route kinds the server holds on purpose: not a latency
ID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def route_kind(method: str, path: str, hold: float) -> str:
    """``POST /tasks``: submit, ``GET /tasks/{uuid}``: get, held calls apart, else the route."""
    route = ID.sub("/{uuid}", path)
    if (method, route) == ("POST", "/tasks"):
        return "submit (POST /tasks)"
    if (method, route) == ("GET", "/tasks/{uuid}"):
        return f"long poll GET /tasks/{{uuid}}?wait {HELD}" if hold else "get (GET /tasks/{uuid})"
    if (method, route) == ("POST", "/tasks/wait"):
        return f"wait (POST /tasks/wait) {HELD}"
    return f"{method} {route}"


# ----------------------------------------------------------------------------- one client
def _connect(target: dict[str, Any]):
    import qcompute

    return qcompute.Connection(fileconf=target.get("conf"), cluster_url=target.get("url"),
                               client_token=target.get("token"), retry_count=target["retries"])


def _timed_http(conn, calls: list[tuple[str, float]], errors: list[str]) -> None:
    """Time every request the connection sends, by route kind; note each failed one."""
    send = conn._http.request

    def request(method: str, path: str, **kwargs: Any) -> Any:
        kind = route_kind(method.upper(), path, kwargs.get("hold", 0.0))
        start = time.perf_counter()
        try:
            return send(method, path, **kwargs)
        except Exception as exc:
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            raise
        finally:
            calls.append((kind, time.perf_counter() - start))

    conn._http.request = request


def client(index: int, round_: int, args: argparse.Namespace, target: dict[str, Any],
           ready: Any, start: Any, results: Any) -> None:
    """One client process: submit ``args.tasks`` tasks, wait on them, report to ``results``."""
    calls: list[tuple[str, float]] = []
    errors: list[str] = []
    done = 0
    conn = None
    try:
        conn = _connect(target)
        _timed_http(conn, calls, errors)
    except Exception as exc:
        errors.append(f"client {index}: {type(exc).__name__}: {exc}")
    ready.put(index)
    start.wait()
    try:
        if conn is not None:
            done = _submit_and_wait(conn, index, round_, args, errors)
            conn.close()
    except Exception as exc:  # the client itself failed: say so, count it
        errors.append(f"client {index}: {type(exc).__name__}: {exc}")
    results.put({"calls": calls, "errors": errors, "done": done, "ended": time.time()})


def _submit_and_wait(conn, index: int, round_: int, args: argparse.Namespace,
                     errors: list[str]) -> int:
    """Submit the tasks one by one, wait until they are final; the number that succeeded."""
    tasks = []
    for i in range(args.tasks):
        task = conn.create_task(f"load {round_}-{index}-{i}", "docker-batch")
        task.constants["DOCKER_CMD"] = "true" if i % 2 else f"echo load {index} {i}"
        with contextlib.suppress(Exception):  # noted by _timed_http
            tasks.append(task.submit())
    if args.wait == "longpoll":
        with contextlib.suppress(Exception):
            conn.wait_tasks(tasks, timeout=args.timeout)
    else:
        _poll(tasks, args.poll_interval, time.monotonic() + args.timeout)
    done = 0
    for task in tasks:
        state = task._data.get("state")
        if state == "Success":
            done += 1
        else:
            errors.append(f"task {task.uuid} ended {state}: {task._data.get('errors')}")
    return done


def _poll(tasks: list, interval: float, deadline: float) -> None:
    """GET each unfinished task every ``interval`` seconds until all are final or the deadline."""
    waiting = list(tasks)
    while waiting and time.monotonic() < deadline:
        time.sleep(interval)
        still = []
        for task in waiting:
            with contextlib.suppress(Exception):
                task.update(flushcache=True)
            if task._data.get("state") not in ("Success", "Failure", "Cancelled"):
                still.append(task)
        waiting = still


# ----------------------------------------------------------------------------- one round
def run_round(round_: int, args: argparse.Namespace, target: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    clients = [context.Process(target=client,
                               args=(i, round_, args, target, ready, start, results))
               for i in range(args.clients)]
    for process in clients:
        process.start()
    for _ in clients:  # every client has built its connection: start them together
        ready.get(timeout=120)
    load = os.getloadavg()[0]
    began = time.time()
    start.set()
    reports = [results.get(timeout=args.timeout + 120) for _ in clients]
    for process in clients:
        process.join(30)
    calls: dict[str, list[float]] = defaultdict(list)
    for report in reports:
        for kind, seconds in report["calls"]:
            calls[kind].append(seconds)
    return {"calls": calls, "errors": [e for r in reports for e in r["errors"]],
            "done": sum(r["done"] for r in reports),
            "seconds": max(r["ended"] for r in reports) - began, "load": load}


def print_round(round_: int, result: dict[str, Any], args: argparse.Namespace) -> None:
    tasks = args.clients * args.tasks
    print(f"\nround {round_}: {args.clients} clients x {args.tasks} tasks = {tasks} tasks, "
          f"{result['done']} Success in {result['seconds']:.1f} s "
          f"({result['done'] / result['seconds']:.1f} tasks/s end to end; load average "
          f"{result['load']:.2f} at its start)")
    errors = result["errors"]
    print(f"errors: {len(errors)}")
    for text, count in Counter(errors).most_common(5):
        print(f"  {count} x {text[:300]}")
    print(f"\n| {'route kind':44} | {'calls':>6} | {'p50 ms':>8} | {'p99 ms':>8} "
          f"| {'max ms':>8} |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for kind, seconds in sorted(result["calls"].items(), key=lambda item: -len(item[1])):
        print(f"| {kind:44} | {len(seconds):6} | {percentile(seconds, 50) * 1e3:8.1f} "
              f"| {percentile(seconds, 99) * 1e3:8.1f} | {max(seconds) * 1e3:8.1f} |")


# ----------------------------------------------------------------------------- the server
def server_pid(url: str) -> Optional[int]:
    """The PID listening on the API URL's port (a local cluster), or None."""
    try:
        import psutil
    except ImportError:
        return None
    port = urlsplit(url).port
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for connection in connections:
        if connection.status == "LISTEN" and connection.laddr.port == port and connection.pid:
            return connection.pid
    return None


@contextlib.contextmanager
def cluster_target(args: argparse.Namespace) -> Iterator[tuple[dict[str, Any], Optional[int]]]:
    """The cluster to load (``--url``, or a fresh one) as connection settings, and its PID."""
    base = {"retries": args.retries}
    if args.url:
        yield {**base, "url": args.url, "token": args.token}, \
            args.server_pid or server_pid(args.url)
        return
    env = {"QCOMPUTE_SERVER_SANDBOX": args.sandbox}
    with running_cluster(workers=args.workers, env=env) as cluster:
        yield {**base, "conf": str(cluster.config), "url": cluster.url}, cluster.process.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per client")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="executor slots of the fresh cluster (default: the server's, "
                             "one per CPU)")
    parser.add_argument("--sandbox", choices=("auto", "off"), default="auto")
    parser.add_argument("--wait", choices=("longpoll", "poll"), default="longpoll")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=0,
                        help="SDK retries per request (default 0: every failure counts)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds a client waits for its tasks at most")
    parser.add_argument("--url", help="load an existing cluster instead of a fresh one")
    parser.add_argument("--token", help="with --url: the API token")
    parser.add_argument("--server-pid", type=int,
                        help="with --url: the server's PID for its RSS (found from the port "
                             "when the server is local)")
    args = parser.parse_args()
    if args.url and not args.token:
        parser.error("--url needs --token")

    load_before = os.getloadavg()[0]
    with cluster_target(args) as (target, pid):
        facts = cluster_facts(target["url"])
        if args.url:
            facts["executor slots (workers)"] = f"{facts['executor slots (workers)']} (--url)"
        conditions("Load: concurrent clients submitting and waiting on tasks", {
            **facts,
            "clients": f"{args.clients} processes x {args.tasks} tasks; rounds: {args.rounds}; "
                       f"wait: {args.wait}"
                       + (f" every {args.poll_interval:g} s" if args.wait == "poll" else "")
                       + f"; SDK retries {args.retries}",
            "server PID": pid or "unknown (pass --server-pid): no RSS"})
        rss = [("before round 1", rss_kb(pid) if pid else None)]
        rounds = []
        for round_ in range(1, args.rounds + 1):
            rounds.append(run_round(round_, args, target))
            time.sleep(2.0)  # the server settles the last events
            rss.append((f"after round {round_}", rss_kb(pid) if pid else None))
            print_round(round_, rounds[-1], args)
        peak = rss_kb(pid, "VmHWM") if pid else None

    print(f"\nserver RSS (PID {pid}, /proc/<pid>/status VmRSS; load average before the "
          f"first round {load_before:.2f}, after the last {os.getloadavg()[0]:.2f}):")
    for label, kb in rss:
        print(f"  {label:16} {'-' if kb is None else f'{kb / 1024:8.1f} MB'}")
    if peak:
        print(f"  {'peak (VmHWM)':16} {peak / 1024:8.1f} MB")
    print_goals(rounds, rss)


def print_goals(rounds: list[dict[str, Any]], rss: list[tuple[str, Optional[int]]]) -> None:
    errors = sum(len(r["errors"]) for r in rounds)
    answered = [s for r in rounds for kind, seconds in r["calls"].items() if HELD not in kind
                for s in seconds]
    p99 = percentile(answered, 99) * 1e3 if answered else None
    print("\ngoals:")
    print(f"  {'0 errors':54} {errors:>8}  {'met' if errors == 0 else 'MISSED'}")
    if p99 is not None:
        print(f"  {'p99 <= 200 ms over every route answered at once (ms)':54} {p99:8.1f}  "
              f"{'met' if p99 <= 200 else 'MISSED'}")
    after = [kb for label, kb in rss[1:] if kb is not None]
    if len(after) >= 2:
        growth = (after[-1] - after[0]) / 1024
        print(f"  {'no RSS growth from round 1 to round ' + str(len(after)) + ' (MB)':54} "
              f"{growth:8.1f}  {'met' if growth <= 0 else 'grew'}")


if __name__ == "__main__":
    main()
