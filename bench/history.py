"""Cost that does not grow with history: submit and list with 100 or 100,000 old tasks.

Usage: ``python bench/history.py [--history 100,100000] [--chunks 10] [--chunk 1000]``.

For each history size H, on a fresh cluster (SQLite, one executor slot):

1. one task runs ``sleep`` and holds the only slot, so what is submitted next stays queued and
   the figures are the API's, not the runners';
2. H finished tasks (one instance each) of another user are written straight into the database;
3. ``--chunks`` bulk submits of ``--chunk`` tasks each (``conn.submit_tasks``): seconds per
   chunk, first and last (a cost that grows with the table shows as a rising chunk time);
4. listing the chunks' tasks (``--chunks`` x ``--chunk``, plus the sleeper): ``conn.all_tasks()``
   (full documents), ``conn.tasks(summary=True)``, the legacy ``GET /tasks``, and the official
   SDK's ``all_tasks()``.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, select  # noqa: E402

from bench._cluster import running_cluster  # noqa: E402
from qcompute import TaskState  # noqa: E402
from qcompute.server.db import make_engine  # noqa: E402
from qcompute.server.db.models import Instance, Task, TaskTag, User  # noqa: E402

_BATCH = 5000


def _seed_history(db_path: Path, count: int) -> None:
    """``count`` finished tasks of another user, written in batches, as old work would be."""
    engine = make_engine(f"sqlite:///{db_path}")
    with engine.begin() as db:
        user_id = db.execute(insert(User).values(
            email="history@bench.local", token_hash=secrets.token_hex(32), bucket_prefix="h-",
            is_owner=False, created_at=datetime(2024, 1, 1))).inserted_primary_key[0]
        first = (db.scalar(select(Task.id).order_by(Task.id.desc()).limit(1)) or 0) + 1
        start = datetime(2024, 1, 1)
        for low in range(0, count, _BATCH):
            ids = range(first + low, first + min(low + _BATCH, count))
            when = [start + timedelta(seconds=i) for i in ids]
            db.execute(insert(Task), [{
                "id": i, "uuid": f"h{i:035d}", "owner_id": user_id, "name": f"old {i}",
                "shortname": f"old-{i}", "profile": "docker-batch",
                "document": {"name": f"old {i}", "profile": "docker-batch"},
                "instance_count": 1, "instance_counts": {"Success": 1}, "state": "Success",
                "state_transition_time": w, "created_at": w, "updated_at": w, "ended_at": w,
                "errors": []} for i, w in zip(ids, when)])
            db.execute(insert(Instance), [{
                "task_id": i, "instance_id": 0, "rank": 0, "state": "Success", "attempt": 1,
                "exit_code": 0, "started_at": w, "ended_at": w} for i, w in zip(ids, when)])
            db.execute(insert(TaskTag), [{"task_id": i, "tag": "history", "position": 0}
                                         for i in ids])
    engine.dispose()


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _run(history: int, chunks: int, chunk: int) -> dict[str, object]:
    with running_cluster(workers=1) as cluster:
        conn = cluster.connection()
        sleeper = conn.create_task("sleeper", "docker-batch")
        sleeper.constants["DOCKER_CMD"] = "sleep 3600"
        sleeper.submit()
        deadline = time.monotonic() + 60
        while sleeper.state != TaskState.FULLY_EXECUTING and time.monotonic() < deadline:
            time.sleep(0.2)
            sleeper.update(flushcache=True)
        seed_s, _ = _timed(lambda: _seed_history(cluster.data_dir / "qcompute.db", history))
        chunk_s = []
        for n in range(chunks):
            tasks = []
            for i in range(chunk):
                task = conn.create_task(f"c{n} t{i}", "docker-batch")
                task.constants["DOCKER_CMD"] = "true"
                tasks.append(task)
            seconds, _ = _timed(lambda: conn.submit_tasks(tasks))
            chunk_s.append(seconds)
        listed = chunks * chunk + 1
        full_s, full = _timed(lambda: list(conn.all_tasks()))
        summary_s, summary = _timed(lambda: conn.tasks(summary=True))
        legacy_s, legacy = _timed(lambda: conn._http.get("/tasks"))
        assert len(full) == len(summary) == len(legacy) == listed, (len(full), len(legacy))
        official_s = None
        try:
            import qarnot

            official = qarnot.Connection(client_token=conn.config.client_token,
                                         cluster_url=cluster.url)
            official_s, found = _timed(lambda: list(official.all_tasks()))
            assert len(found) == listed
        except ImportError:
            pass
        conn.close()
    return {"history": history, "seed_s": seed_s, "chunks": chunk_s, "listed": listed,
            "all_tasks": full_s, "summaries": summary_s, "legacy": legacy_s,
            "official": official_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="100,100000")
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=1000)
    args = parser.parse_args()
    rows = [_run(int(h), args.chunks, args.chunk) for h in args.history.split(",")]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nSubmit and list against history: SQLite, 1 executor slot held (all submitted tasks "
          f"stay queued), {os.cpu_count()} CPUs, load average before the last run's end {load}\n")
    print(f"| history tasks | submit chunk of {args.chunk}: first s | median s | last s "
          f"| list {rows[0]['listed']}: all_tasks() s | tasks(summary) s | GET /tasks s "
          "| official all_tasks() s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        chunk_s = sorted(row["chunks"])
        official = "-" if row["official"] is None else f"{row['official']:.2f}"
        print(f"| {row['history']:,} | {row['chunks'][0]:.2f} | {chunk_s[len(chunk_s) // 2]:.2f} "
              f"| {row['chunks'][-1]:.2f} | {row['all_tasks']:.2f} | {row['summaries']:.2f} "
              f"| {row['legacy']:.2f} | {official} |")


if __name__ == "__main__":
    main()
