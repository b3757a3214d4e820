"""Scale: instances on two Ray nodes against bare Ray tasks, and one scheduler against a
simulated cluster of 1,000 nodes x 32 slots.

Usage::

    python bench/scale.py ray [--instances 1000] [--slots 16] [--rounds 1] [--sandbox auto|off]
    python bench/scale.py sim [--rates 11.6,100,250,500,1000] [--per-task 20] [--window 30]
                              [--database-url URL] [--profile DIR]

``ray``: a Ray cluster of two nodes on this host (``ray.cluster_utils.Cluster``, token
authentication on), ``--slots`` CPUs between them (logical CPUs: ``sleep`` uses none). Two
contenders, in an order rotated each round, after a warm-up of one instance per slot each:

* **qcompute**: an in-process server (the real API over HTTP on loopback, the scheduler, SQLite,
  the ``RayExecutor`` with 1 CPU per slot, the sandbox of ``--sandbox``; storage stubbed, as no
  instance touches S3) runs one task of ``--instances`` instances of ``sleep 1``;
* **bare Ray**: as many Ray tasks (``num_cpus=1``, ``max_retries=0``, all submitted at once,
  then ``ray.get``) that each run ``subprocess.run(["sleep", "1"])``.

For each: the wall time from the submit to the last end, the slot utilisation (the commands'
own run time over slots x wall time), the slot time per instance beyond its command, and the
CPU time per instance of every process of the bench (the server, Ray's processes, their
workers, the sandboxes and commands), and that CPU by part (``PARTS``: the server's scheduler
thread, its API threads, the rest of it; the Ray workers with all they start; the raylets; the
GCS; Ray's other processes).

``sim``: an in-process server (real API over HTTP, real scheduler, the database of
``--database-url``, else ``QCOMPUTE_SERVER_DATABASE_URL``, else SQLite in a temporary dir) whose
executor is ``bench/_sim_executor.py``: ``--nodes`` x ``--slots`` slots, each instance "running"
for a lognormal duration (``--median`` seconds, ``--sigma``) divided by ``--compression``. A
client process posts tasks of ``--per-task`` instances at each of ``--rates`` (instances per
second, open loop, evenly spaced) for ``--warmup`` + ``--window`` seconds. Over the window:
the instances started per second, the p50/p99 time from the client sending the POST to the
instance being handed to the executor (its start), and the CPU seconds of the scheduler's
thread and of the whole server per start. ``--profile DIR`` samples the server with
``py-spy record --gil`` during the window of the last rate.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import conditions, percentile, rotated  # noqa: E402
from qcompute.server.executors.base import S3Access  # noqa: E402

DAY_RATE = 1_000_000 / 86400  # 1M instances a day, in instances per second


# -- the in-process server ----------------------------------------------------------------------

class _NoStorage:
    """No S3: no instance here downloads or uploads anything."""

    endpoint_url = qarnot_sdk_endpoint_url = "http://127.0.0.1:9"
    create_bucket_url = None
    admin_access = None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> str: return "none (bench)"
    def check(self) -> Optional[str]: return None
    def owner_access(self, email: str, token: str, stored=None) -> S3Access:
        return S3Access(self.endpoint_url, email, token)
    def user_keys(self, email: str, stored): return None
    def usage(self, prefix: str): return None
    def prepare_result_bucket(self, name: str) -> None: ...
    def provision_user(self, email: str, token: str, bucket_prefix) -> None: ...
    def ensure_user(self, email: str, token: str, bucket_prefix, stored) -> None: ...
    def remove_user(self, email: str) -> None: ...


class Server:
    """``create_app`` served by uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, settings, executor_factory=None) -> None:
        import uvicorn

        from qcompute.server.app import create_app
        from qcompute.server.testing import free_port

        self.settings = settings.model_copy(update={"port": free_port()})
        self.app = create_app(self.settings, storage=_NoStorage(),
                              executor_factory=executor_factory)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.settings.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="bench-uvicorn",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def token(self) -> str:
        from qcompute.server.bootstrap import client_config_path, read_token

        return read_token(client_config_path(self.settings))

    @property
    def scheduler(self):
        return self.app.state.ctx.scheduler

    def __enter__(self) -> "Server":
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(120)


def _task(name: str, instances: int, command: str, **constants: str) -> dict[str, Any]:
    return {"name": name, "profile": "docker-batch", "instanceCount": instances,
            "constants": [{"key": "DOCKER_CMD", "value": command},
                          *({"key": k, "value": v} for k, v in constants.items())]}


def _thread_cpu(native_id: int) -> float:
    """CPU seconds of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int = 0) -> float:
    """CPU seconds of a process and all its descendants alive now (with the children each has
    reaped): this process by default."""
    root = root or os.getpid()
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        times[pid] = sum(int(v) for v in fields[11:15]) / tick
    total, work = 0.0, [root]
    while work:
        pid = work.pop()
        total += times.get(pid, 0.0)
        work += children.get(pid, [])
    return total


PARTS = ("scheduler thread", "API threads", "rest of the server process", "Ray workers",
         "raylets", "GCS", "other Ray processes")


def _cpu_by_part() -> dict[str, float]:
    """CPU seconds of this process and its descendants alive now (with the children each has
    reaped), by part: this process's threads (the scheduler's, the API's, the rest: Ray's
    client, the streams, the threads that ended), then its descendants by kind, each process
    counted with the kind of its nearest Ray ancestor (a Ray worker's sandboxes and commands
    are the worker's)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    kinds: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid], times[pid] = int(fields[1]), sum(int(v) for v in fields[11:15]) / tick
        program = " ".join(a.decode(errors="replace") for a in argv[:2])
        kinds[pid] = ("raylets" if program.split(" ")[0].endswith("/raylet") else
                      "GCS" if "gcs_server" in program else
                      "Ray workers" if comm.startswith("ray::") or "default_worker" in program
                      else "other Ray processes" if "/ray/" in program else "")
    me, parts = os.getpid(), dict.fromkeys(PARTS, 0.0)
    for pid in times:
        up, kind = pid, ""
        while up not in (me, 0, 1) and up in parent:
            kind = kind or kinds.get(up, "")
            up = parent[up]
        if up == me and pid != me:
            parts[kind or "other Ray processes"] += times[pid]
    threads = {t.native_id: t.name for t in threading.enumerate()}
    parts["rest of the server process"] = times.get(me, 0.0)
    for task in Path("/proc/self/task").iterdir():
        name = threads.get(int(task.name), "")
        part = "scheduler thread" if name == "qcompute-scheduler" else \
            "API threads" if name.startswith(("AnyIO worker", "bench-uvicorn")) else ""
        if part:
            try:
                cpu = _thread_cpu(int(task.name))
            except OSError:
                continue
            parts[part] += cpu
            parts["rest of the server process"] -= cpu
    return parts


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


# -- ray ----------------------------------------------------------------------------------------

def _bare_ray(instances: int) -> dict[str, Any]:
    import ray

    @ray.remote(num_cpus=1, max_retries=0)
    def sleep_one() -> tuple[float, float]:
        began = time.time()
        subprocess.run(["sleep", "1"], check=True)
        return began, time.time()

    parts, start = _cpu_by_part(), time.time()
    spans = ray.get([sleep_one.remote() for _ in range(instances)])
    return {"wall": time.time() - start, "busy": sum(end - began for began, end in spans),
            **_cpu_spent(parts)}


def _cpu_spent(before: dict[str, float]) -> dict[str, Any]:
    """The CPU seconds spent since ``before`` (a ``_cpu_by_part``): in all, and by part."""
    parts = {part: cpu - before[part] for part, cpu in _cpu_by_part().items()}
    return {"cpu": sum(parts.values()), "parts": parts}


def _qcompute_ray(server: Server, instances: int, command: str = "sleep 1") -> dict[str, Any]:
    import requests
    from sqlalchemy import select

    from qcompute.server.db.models import Instance, Task

    http = requests.Session()
    http.headers["Authorization"] = server.token
    parts, start = _cpu_by_part(), time.time()
    answer = http.post(f"{server.url}/tasks", json=_task("scale", instances, command))
    answer.raise_for_status()
    uuid = answer.json()["uuid"]
    while http.get(f"{server.url}/tasks/{uuid}", params={"wait": 30}).json()["state"] not in \
            ("Success", "Failure", "Cancelled"):
        pass
    spent = _cpu_spent(parts)
    with server.app.state.ctx.sessions() as session:
        rows = session.execute(select(Instance.state, Instance.error, Instance.timeline)
                               .join(Task).where(Task.uuid == uuid)).all()
    states = {row.state for row in rows}
    if states != {"Success"}:
        raise RuntimeError(f"the instances ended {states}: {[r.error for r in rows][:3]}")
    ends = [row.timeline["ended"] for row in rows]
    busy = sum(r.timeline["command_ended"] - r.timeline["command_started"] for r in rows)
    return {"wall": max(ends) - start, "busy": busy, **spent}


@contextlib.contextmanager
def _ray_cluster(slots: int) -> Iterator[Any]:
    """Two Ray nodes on this host with ``slots`` CPUs between them, token authentication on."""
    import secrets

    import ray
    from ray.cluster_utils import Cluster

    from qcompute.server.executors.ray_executor import use_token

    tmp = Path(tempfile.mkdtemp(prefix="qcompute-scale-"))
    token = tmp / "ray-token"
    token.write_text(secrets.token_hex(32))
    use_token(token)
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=slots - slots // 2, include_dashboard=False))
    cluster.add_node(num_cpus=slots // 2)
    cluster.token, cluster.tmp = token, tmp
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def run_ray(args: argparse.Namespace) -> None:
    from qcompute.server.settings import ServerSettings

    load_start = _load()
    results: dict[str, list[dict[str, Any]]] = {"qcompute": [], "bare Ray": []}
    with _ray_cluster(args.slots) as cluster:
        settings = ServerSettings(
            data_dir=cluster.tmp / "server", storage="external", executor="ray",
            ray_address=cluster.address, ray_token_file=cluster.token, ray_cpus_per_slot=1,
            sandbox=args.sandbox)
        with Server(settings) as server:
            isolation = server.scheduler.executor.isolation
            capacity = server.scheduler.executor.capacity
            _qcompute_ray(server, args.slots)  # warm-up: a worker (and sandbox) per slot
            _bare_ray(args.slots)
            for round_ in range(args.rounds):
                for name in rotated(list(results), round_):
                    run = _qcompute_ray(server, args.instances) if name == "qcompute" \
                        else _bare_ray(args.instances)
                    run["load"] = _load()
                    results[name].append(run)
                    print(f"  round {round_ + 1}, {name}: {run['wall']:.1f} s (load {run['load']})",
                          flush=True)
    import ray

    conditions("Scale: one-second instances on 2 Ray nodes", {
        "load average at the start": load_start,
        "ray": f"{ray.__version__}, 2 nodes on this host (ray.cluster_utils.Cluster), "
               f"token authentication on",
        "slots": f"{args.slots} ({args.slots - args.slots // 2} + {args.slots // 2} logical CPUs, "
                 f"1 per instance; qcompute sees {capacity})",
        "instances": f"{args.instances} x `sleep 1`, after a warm-up of {args.slots} each",
        "qcompute": f"one task, POST /tasks to an in-process server (SQLite), RayExecutor; "
                    f"instances: {isolation}",
        "bare Ray": "@ray.remote(num_cpus=1, max_retries=0) running subprocess.run(['sleep', "
                    "'1']), all submitted, then ray.get",
        "rounds": f"{args.rounds}, order rotated (median shown)",
        "CPU": "every process of the bench (server, driver, Ray, workers, sandboxes, commands)"})
    print(f"\n| {'contender':9} | {'wall s':>6} | {'utilisation':>11} | "
          f"{'slot s/instance beyond the command':>34} | {'CPU ms/instance':>15} | load at end |")
    print(f"|{'-' * 11}|{'-' * 8}|{'-' * 13}|{'-' * 36}|{'-' * 17}|{'-' * 13}|")
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        busy = statistics.median(r["busy"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        extra = (args.slots * wall - busy) / args.instances
        summary[name] = (wall, busy / (args.slots * wall), extra, cpu / args.instances)
        print(f"| {name:9} | {wall:6.1f} | {summary[name][1]:10.1%} | {extra:34.3f} | "
              f"{1000 * cpu / args.instances:15.1f} | {runs[-1]['load']:11} |")
    print("\nWhere the CPU goes, ms per instance (median of the rounds):\n")
    print(f"| {'part':26} | " + " | ".join(f"{name:>9}" for name in results) + " |")
    print(f"|{'-' * 28}|" + "|".join("-" * 11 for _ in results) + "|")
    for part in PARTS:
        print(f"| {part:26} | " + " | ".join(
            f"{1000 * statistics.median(r['parts'][part] for r in runs) / args.instances:9.1f}"
            for runs in results.values()) + " |")
    ours, bare = summary["qcompute"], summary["bare Ray"]
    print(f"\ngoal: utilisation >= 80 % (qcompute: {ours[1]:.1%}, bare Ray: {bare[1]:.1%})")
    print(f"goal: added cost per instance <= 2x bare Ray's: slot time beyond the command "
          f"{ours[2] / bare[2]:.1f}x ({ours[2] * 1000:.0f} ms against {bare[2] * 1000:.0f} ms); "
          f"CPU {ours[3] / bare[3]:.1f}x ({ours[3] * 1000:.1f} ms against "
          f"{bare[3] * 1000:.1f} ms); whole slot time per instance "
          f"{(1 + ours[2]) / (1 + bare[2]):.2f}x")


# -- sim ----------------------------------------------------------------------------------------

def _client(url: str, token: str, rate: float, per_task: int, seconds: float, threads: int,
            out) -> None:
    """Post tasks of ``per_task`` instances at ``rate`` instances/s for ``seconds`` (open loop,
    evenly spaced), from ``threads`` kept-alive connections; put what happened on ``out``."""
    import queue as queue_

    import requests

    todo: queue_.Queue = queue_.Queue()
    posts: list[float] = []
    errors: list[str] = []

    def work() -> None:
        http = requests.Session()
        http.headers["Authorization"] = token
        while (item := todo.get()) is not None:
            sent = time.time()
            try:
                answer = http.post(f"{url}/tasks", json=_task(
                    f"sim {item}", per_task, "simulated", SUBMITTED_AT=repr(sent)))
                if answer.status_code >= 300:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")
            except requests.RequestException as exc:
                errors.append(repr(exc))
            posts.append(time.time() - sent)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    interval, start, sent = per_task / rate, time.monotonic(), 0
    behind = 0.0
    while (due := start + sent * interval) < start + seconds:
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        todo.put(sent)
        sent += 1
    for _ in workers:
        todo.put(None)
    for worker in workers:
        worker.join()
    out.put({"tasks": sent, "errors": errors[:5], "error_count": len(errors),
             "post_p50": percentile(posts, 50) if posts else math.nan,
             "post_p99": percentile(posts, 99) if posts else math.nan,
             "queue_behind": behind})


def _queued(server: Server) -> int:
    from sqlalchemy import func, select

    from qcompute.server.db.models import Instance

    with server.app.state.ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(Instance)
                              .where(Instance.state == "Queued")) or 0


def _py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["py-spy", "record", "--gil", "--threads", "-r", "100", "-d", str(int(seconds)),
         "-f", "raw", "-o", str(out / "scale-sim.txt"), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _hot_spots(path: Path, thread: str, top: int = 12) -> list[tuple[str, float]]:
    """From py-spy's raw (collapsed) stacks: the share of ``thread``'s GIL-holding samples in
    which each qcompute/SQLAlchemy function is on the stack (functions of the scheduler)."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if thread not in stack.split(";", 1)[0]:
            continue
        total += int(count)
        seen = set()
        for frame in stack.split(";")[1:]:
            name = frame.split(" (")[0]
            where = frame.split(" (", 1)[1] if " (" in frame else ""
            if ("qcompute" in where or "sqlalchemy" in where) and name not in seen:
                seen.add(name)
                label = f"{name} ({where.split('/')[-1].split(':')[0]})"
                inclusive[label] = inclusive.get(label, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return [(name, count / total) for name, count in ranked] if total else []


def run_sim(args: argparse.Namespace) -> None:
    from bench._sim_executor import SimulatedExecutor
    from qcompute.server.settings import ServerSettings

    tmp = Path(tempfile.mkdtemp(prefix="qcompute-scale-sim-"))
    url = args.database_url or os.environ.get("QCOMPUTE_SERVER_DATABASE_URL") or \
        f"sqlite:///{tmp / 'qcompute.db'}"
    made: list[SimulatedExecutor] = []

    def factory(on_event) -> SimulatedExecutor:
        made.append(SimulatedExecutor(on_event, nodes=args.nodes, slots=args.slots,
                                      median_seconds=args.median, sigma=args.sigma,
                                      compression=args.compression))
        return made[0]

    settings = ServerSettings(data_dir=tmp / "server", storage="external", database_url=url,
                              max_instances_per_task=max(1000, args.per_task))
    rates = [float(r) for r in args.rates.split(",") if r]
    mean = args.median * math.exp(args.sigma ** 2 / 2) / args.compression
    rows, load_start = [], _load()
    context = multiprocessing.get_context("spawn")
    try:
        with Server(settings, factory) as server:
            executor, scheduler = made[0], server.scheduler
            thread_id = scheduler._thread.native_id
            for i, rate in enumerate(rates):
                out = context.Queue()
                client = context.Process(target=_client, args=(
                    server.url, server.token, rate, args.per_task, args.warmup + args.window,
                    args.threads, out))
                begun = time.time()
                client.start()
                time.sleep(args.warmup)
                profiler = _py_spy(os.getpid(), args.window, Path(args.profile)) \
                    if args.profile and i == len(rates) - 1 else None
                first, sched0, cpu0 = len(executor.starts), _thread_cpu(thread_id), _tree_cpu()
                window_start = time.time()
                time.sleep(args.window)
                window_end = time.time()
                last, sched1, cpu1 = len(executor.starts), _thread_cpu(thread_id), _tree_cpu()
                load = _load()
                report = out.get(timeout=600)
                client.join()
                if profiler is not None:
                    profiler.wait(60)
                drained = time.monotonic() + args.drain
                while _queued(server) and time.monotonic() < drained:
                    time.sleep(0.5)
                left = _queued(server)
                started = executor.starts[first:last]
                window = [s for s in executor.starts if window_start <= s[1] < window_end]
                latencies = sorted(start - sub for start, sub in window)
                latencies += [math.inf] * left  # never started: the backlog did not drain
                starts = len(started)
                rows.append({
                    "rate": rate, "starts/s": starts / (window_end - window_start),
                    "p50": percentile(latencies, 50) if latencies else math.nan,
                    "p99": percentile(latencies, 99) if latencies else math.nan,
                    "sched_ms": 1000 * (sched1 - sched0) / max(starts, 1),
                    "cpu_ms": 1000 * (cpu1 - cpu0) / max(starts, 1),
                    "sched_share": (sched1 - sched0) / (window_end - window_start),
                    "running": len(executor.running()), "left": left, "load": load,
                    "client": report, "elapsed": time.time() - begun})
                print(f"  {rate:g}/s: {rows[-1]['starts/s']:.0f} starts/s, p99 "
                      f"{rows[-1]['p99']:.3f} s, load {load}", flush=True)
            db_size = (tmp / "qcompute.db").stat().st_size if url.startswith("sqlite") else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    conditions("Scale: one scheduler against a simulated cluster", {
        "load average at the start": load_start,
        "database": url.split("@")[-1] + (f" ({db_size / 2**20:.0f} MB at the end)"
                                          if db_size else ""),
        "cluster (simulated)": f"{args.nodes} nodes x {args.slots} slots = "
                               f"{args.nodes * args.slots} slots; bench/_sim_executor.py: "
                               f"Placed + Phase running at hand-over, Finished at the end",
        "durations": f"lognormal, median {args.median:g} s, sigma {args.sigma:g} (mean "
                     f"{args.median * math.exp(args.sigma ** 2 / 2):.0f} s), compressed "
                     f"{args.compression:g}x: mean {mean:.1f} s",
        "submits": f"POST /tasks over HTTP (loopback) from a client process, {args.threads} "
                   f"connections, tasks of {args.per_task} instances, evenly spaced",
        "each rate": f"{args.warmup:g} s of warm-up, then a {args.window:g} s window; the queue "
                     f"drained (at most {args.drain:g} s) before the next rate",
        "latency": "client's send of POST /tasks -> the scheduler hands the instance to the "
                   "executor (its start), for the instances sent in the window; one never "
                   "started counts as infinite",
        "1M instances/day": f"{DAY_RATE:.1f} instances/s on average"})
    print(f"\n| {'offered /s':>10} | {'starts/s':>8} | {'p50 s':>6} | {'p99 s':>6} | "
          f"{'sched CPU ms/start':>18} | {'sched thread busy':>17} | {'server CPU ms/start':>19} | "
          f"{'running':>7} | {'POST p99 s':>10} | {'errors':>6} | load at end")
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 20}|{'-' * 19}|{'-' * 21}|"
          f"{'-' * 9}|{'-' * 12}|{'-' * 8}|{'-' * 17}|")
    for row in rows:
        print(f"| {row['rate']:10g} | {row['starts/s']:8.0f} | {row['p50']:6.3f} | "
              f"{row['p99']:6.3f} | {row['sched_ms']:18.2f} | {row['sched_share']:16.0%} | "
              f"{row['cpu_ms']:19.2f} | {row['running']:7} | {row['client']['post_p99']:10.3f} | "
              f"{row['client']['error_count']:6} | {row['load']}")
        if row["client"]["errors"]:
            print(f"    errors: {row['client']['errors']}")
    best = max(rows, key=lambda r: r["starts/s"])
    print(f"\ngoal: >= 500 dispatches/s sustained (best: {best['starts/s']:.0f}/s offered "
          f"{best['rate']:g}/s)")
    met = [r for r in rows if r["p99"] <= 1.0]
    print(f"goal: p99 submit -> start <= 1 s (met up to "
          f"{max((r['rate'] for r in met), default=0):g} instances/s offered)")
    if args.profile:
        raw = Path(args.profile) / "scale-sim.txt"
        if raw.exists():
            print(f"\nWhere the scheduler thread's GIL time goes at {rates[-1]:g}/s offered "
                  f"(py-spy --gil, share of its samples with the function on the stack; {raw}):")
            for name, share in _hot_spots(raw, "qcompute-scheduler"):
                print(f"  {share:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    ray_ = sub.add_parser("ray", help="one-second instances on 2 Ray nodes vs bare Ray tasks")
    ray_.add_argument("--instances", type=int, default=1000)
    ray_.add_argument("--slots", type=int, default=16, help="logical CPUs of the 2 nodes")
    ray_.add_argument("--rounds", type=int, default=1)
    ray_.add_argument("--sandbox", choices=("auto", "off"), default="auto")
    sim = sub.add_parser("sim", help="one scheduler against 1,000 simulated nodes")
    sim.add_argument("--nodes", type=int, default=1000)
    sim.add_argument("--slots", type=int, default=32)
    sim.add_argument("--median", type=float, default=300.0, help="seconds, before compression")
    sim.add_argument("--sigma", type=float, default=1.0)
    sim.add_argument("--compression", type=float, default=60.0)
    sim.add_argument("--rates", default=f"{DAY_RATE:.1f},100,250,500,1000",
                     help="offered instances per second, one step each")
    sim.add_argument("--per-task", type=int, default=20)
    sim.add_argument("--threads", type=int, default=4, help="the client's connections")
    sim.add_argument("--warmup", type=float, default=10.0)
    sim.add_argument("--window", type=float, default=30.0)
    sim.add_argument("--drain", type=float, default=60.0)
    sim.add_argument("--database-url", default="")
    sim.add_argument("--profile", default="", help="a dir: py-spy the last rate's window")
    args = parser.parse_args()
    run_ray(args) if args.part == "ray" else run_sim(args)


if __name__ == "__main__":
    main()
