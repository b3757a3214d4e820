"""A task that floods its stdout keeps the server's memory bounded: each chunk goes from the
runner through the executor's pipe straight to the instance's output file, which keeps at most
``output_buffer_bytes`` (the oldest bytes dropped, their count kept)."""
from __future__ import annotations

import psutil

from qcompute import TaskState

FLOOD = 200_000_000  # bytes the command writes: 50 times the default output buffer
RSS_GROWTH_BOUND = 64 * 2**20  # generous: allocator noise, far below what the flood would cost


def test_a_stdout_flood_keeps_the_server_memory_bounded(cluster, conn):
    server = psutil.Process(cluster.process.pid)
    before = server.memory_info().rss

    task = conn.create_task("flood", "docker-batch")
    task.constants["DOCKER_CMD"] = (f"sh -c 'head -c {FLOOD} /dev/zero | tr \"\\0\" y; "
                                    "echo; echo end'")
    task.submit()
    assert task.wait(timeout=300), "the flooding task did not end"

    grown = server.memory_info().rss - before
    assert task.state == TaskState.SUCCESS, task.errors
    kept = task.stdout()
    assert kept.endswith("y\nend\n") and set(kept[:-5]) == {"y"}  # the newest bytes are kept
    assert len(kept) <= 6 * 2**20  # the buffer (4 MiB) and the slack it trims at
    dropped = cluster.data_dir / "output" / task.uuid / "0.stdout.dropped"
    assert int(dropped.read_text()) + len(kept) == FLOOD + 5  # every byte went through
    assert grown < RSS_GROWTH_BOUND, f"the server grew by {grown / 2**20:.0f} MiB"
