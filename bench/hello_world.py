"""Hello-world turnaround on the embedded cluster, and the cluster's memory.

Usage: ``qcompute up`` then ``python bench/hello_world.py [runs]``. Prints the wall time of
``task.run()`` for ``echo hello world`` (median, min, max over the runs) and the memory of the
cluster's processes (the server, SeaweedFS and the instance runners): the peak RSS of each
long-lived process (VmHWM) and the peak of their sum, sampled every 10 ms during the runs.
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import qcompute  # noqa: E402
from bench._report import cluster_facts, conditions, rss_kb  # noqa: E402
from qcompute.server.settings import default_data_dir  # noqa: E402


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
    except OSError:
        return "?"


def main(runs: int = 10) -> None:
    server_pid = int((default_data_dir() / "server.pid").read_text().split()[0])
    peak_total, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = sum((rss_kb(pid) or 0) for pid in _tree(server_pid))
            peak_total[0] = max(peak_total[0], total)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    conn = qcompute.Connection()
    times = []
    for _ in range(runs):
        task = conn.create_task("hello world", "docker-batch")
        task.constants["DOCKER_CMD"] = "echo hello world from ${INSTANCE_ID}!"
        start = time.perf_counter()
        task.run()
        times.append(time.perf_counter() - start)
        assert task.stdout() == "hello world from 0!\n", task.stdout()
        task.delete()
    stop.set()
    sampler.join()
    conditions("Hello world on the cluster of `qcompute up`", {
        **cluster_facts(conn.cluster_url), "runs": f"{runs}, no warm-up"})
    print(f"task.run() of hello world, {runs} runs: median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s, max {max(times):.3f} s")
    print("peak RSS of the long-lived cluster processes (VmHWM):")
    for pid in _tree(server_pid):
        print(f"  {(rss_kb(pid, 'VmHWM') or 0) / 1024:7.1f} MB  {_name(pid)}")
    print(f"peak of the summed RSS of the whole tree (runners included): "
          f"{peak_total[0] / 1024:.1f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
