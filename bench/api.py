"""Single API requests: the latency of one request at a time on an otherwise idle cluster.

Usage: ``python bench/api.py [--runs 50] [--sandbox auto|off] [--profile-seconds 0]``.
Starts its own cluster (2 worker slots) and stops it at the end. Each request is sent over one
kept-alive HTTP connection, as the SDKs send them, after one warm-up request of each kind; the
GETs are interleaved, the order rotated, while nothing runs. Then ``POST /tasks`` submits one
task of ``true`` at a time, back to back (each task then runs, so the figure includes the
cluster's dispatch of the previous one competing for the CPU); "POST /tasks (idle)" waits
(untimed) for each task to end before the next submit. Last, the server's CPU time per
request is measured for each kind, sent for 2 s in a block of its own (a submit's includes its
dispatch; the idle server's own CPU is taken off).
With ``--profile-seconds S``, it then sends one kind (``--profile``) for S seconds under
``py-spy record --gil`` and prints, per server thread, the time it held the GIL per request
and the functions under it.
"""
from __future__ import annotations

import argparse
import collections
import configparser
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cluster import running_cluster  # noqa: E402
from bench._report import cluster_facts, conditions, cpu_seconds, rotated  # noqa: E402

GOALS = {"POST /tasks": 0.005, "POST /tasks (idle)": 0.005}  # the goals; every GET: 2 ms
_TASK = {"name": "bench", "profile": "docker-batch", "instanceCount": 1,
         "constants": [{"key": "DOCKER_CMD", "value": "true"}]}


def _client(config: Path) -> tuple[requests.Session, str]:
    parser = configparser.ConfigParser()
    parser.read(config)
    session = requests.Session()
    session.headers["Authorization"] = parser["client"]["token"]
    return session, parser["cluster"]["url"].rstrip("/")


def _submit_on_idle(session: requests.Session,
                    url: str) -> tuple[Callable[[], None], list[float]]:
    """A submit timed on its own, and its times: each task is waited for (untimed) before the
    next one is submitted."""
    last: list[str] = []
    times: list[float] = []

    def once() -> None:
        if last:
            while session.get(f"{url}/tasks/{last[0]}", params={"wait": 5}).json()["state"] \
                    not in ("Success", "Failure", "Cancelled"):
                pass
            last.clear()
        start = time.perf_counter()
        response = session.post(f"{url}/tasks", json=_TASK)
        times.append(time.perf_counter() - start)
        response.raise_for_status()
        last.append(response.json()["uuid"])
    return once, times


def _requests(session: requests.Session, url: str) -> dict[str, Callable[[], None]]:
    uuid = session.post(f"{url}/tasks", json=_TASK).json()["uuid"]

    def call(method: str, path: str, **kwargs) -> Callable[[], None]:
        def once() -> None:
            session.request(method, url + path, **kwargs).raise_for_status()
        return once
    return {"POST /tasks": call("POST", "/tasks", json=_TASK),
            "GET /settings": call("GET", "/settings"),
            "GET /info": call("GET", "/info"),
            "GET /versions": call("GET", "/versions"),
            "GET /tasks/{uuid}": call("GET", f"/tasks/{uuid}")}


def _measure(calls: dict[str, Callable[[], None]], runs: int) -> dict[str, list[float]]:
    for once in calls.values():
        once()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(runs):
        for name in rotated(list(calls), i):
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _server_cpu(pid: int, calls: dict[str, Callable[[], None]],
                seconds: float = 2.0) -> dict[str, float]:
    """CPU seconds of the server process per request, each kind sent for ``seconds`` in a block
    of its own; the block ends when the server is idle again (a submit's dispatch is counted),
    and what the idle server spends in the same time is taken off."""
    spent = {}
    for name, once in calls.items():
        before, start, count = cpu_seconds(pid), time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            once()
            count += 1
        time.sleep(1.0)  # the last submits' dispatch and end
        elapsed = time.perf_counter() - start
        spent[name] = (cpu_seconds(pid) - before - _idle_cpu(pid, elapsed)) / count
    return spent


def _idle_cpu(pid: int, seconds: float) -> float:
    """What the server spends in ``seconds`` doing nothing (its ticker, the storage checks)."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def _profile(pid: int, seconds: float, name: str, send: Callable[[], None]) -> None:
    """Send a request back to back under py-spy; print GIL samples per thread and top
    functions, per request."""
    out = Path(tempfile.mkdtemp()) / "spy.txt"
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "200", "--threads",
                            "--gil", "-f", "raw", "-o", str(out), "-d", str(int(seconds))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, count = threading.Event(), 0
    threading.Timer(seconds, done.set).start()
    while not done.is_set():
        send()
        count += 1
    spy.wait()
    threads: collections.Counter = collections.Counter()
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in out.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        thread, *frames = (re.sub(r":\d+\)$", ")", f) for f in stack.split(";"))
        who = thread.rsplit(": ", 1)[-1].strip('"')
        threads[who] += int(samples)
        for frame in set(frames):
            inclusive[who][frame] += int(samples)
        if frames:
            own[who][frames[-1]] += int(samples)
    print(f"\npy-spy, 200 Hz, GIL holder only, {seconds:.0f} s of back-to-back {name}: "
          f"{count} requests")
    for who, samples in threads.most_common():
        print(f"\n{samples * 5 / count:5.2f} ms/request  {who}")
        if samples * 20 < sum(threads.values()):
            continue
        for label, counter in (("inclusive", inclusive[who]), ("own", own[who])):
            print(f"  top {label}:")
            for frame, n in [(f, n) for f, n in counter.most_common() if n < samples][:20]:
                print(f"    {n * 5 / count:5.2f} ms  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--sandbox", choices=("auto", "off"), default="auto")
    parser.add_argument("--profile-seconds", type=float, default=0)
    parser.add_argument("--profile", default="POST /tasks", metavar="REQUEST",
                        help="the request to profile, e.g. 'GET /info'")
    args = parser.parse_args()

    with running_cluster(workers=2, env={"QCOMPUTE_SERVER_SANDBOX": args.sandbox}) as cluster:
        facts = cluster_facts(cluster.url)
        session, url = _client(cluster.config)
        calls = _requests(session, url)
        submit = calls.pop("POST /tasks")
        times = _measure(calls, args.runs)  # on an idle cluster: nothing runs
        times.update(_measure({"POST /tasks": submit}, args.runs))
        idle, idle_times = _submit_on_idle(session, url)
        _measure({"idle": idle}, args.runs)
        times["POST /tasks (idle)"] = idle_times[1:]  # after the warm-up
        cpu = _server_cpu(cluster.process.pid, {**calls, "POST /tasks": submit})
        if args.profile_seconds:
            _profile(cluster.process.pid, args.profile_seconds, args.profile,
                     {**calls, "POST /tasks": submit}[args.profile])

    conditions("Single API requests, one at a time, over one kept-alive connection", {
        **facts, "runs": f"{args.runs} of each after one warm-up; GETs interleaved (the order "
                         "rotated) on the idle cluster, then the submits"})
    print()
    print(f"| {'request':20} | {'median ms':>9} | {'p90 ms':>7} | {'min ms':>7} | goal ms "
          f"| server CPU ms |")
    print(f"|{'-' * 22}|{'-' * 11}|{'-' * 9}|{'-' * 9}|---------|---------------|")
    for name, runs in times.items():
        runs.sort()
        goal = GOALS.get(name, 0.002) * 1000
        print(f"| {name:20} | {statistics.median(runs) * 1000:9.2f} "
              f"| {runs[int(len(runs) * 0.9)] * 1000:7.2f} | {runs[0] * 1000:7.2f} "
              f"| {goal:7.0f} | {f'{cpu[name] * 1000:.2f}' if name in cpu else '-':>13} |")


if __name__ == "__main__":
    main()
