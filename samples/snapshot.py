"""Snapshots: read a long task's results while it still runs.

Shows a task that writes one checkpoint file per second for 8 seconds. ``snapshot(2)`` (set
before submit) uploads its results every 2 seconds; ``instant()`` asks for one upload now and
``wait_snapshot`` waits for it. The script lists the result bucket twice while the task runs,
then waits for the end. Checkpoints appear in the bucket without stopping the task.

Run it with ``python samples/snapshot.py`` after ``qcompute up``.
"""
import time
import uuid

import qcompute

conn = qcompute.Connection()
results = conn.create_bucket(f"qcompute-sample-snapshots-{uuid.uuid4().hex[:8]}")
try:
    task = conn.create_task("checkpoints", "docker-batch")
    task.results = results
    task.constants["DOCKER_CMD"] = (
        "sh -c 'for i in 1 2 3 4 5 6 7 8; do echo step $i > checkpoint-$i.txt; sleep 1; done'")
    task.snapshot(2)  # periodic: every 2 s while it runs
    task.submit()

    time.sleep(3)
    snapshot_id = task.instant(whitelist=r"checkpoint-.*\.txt")
    task.wait_snapshot(snapshot_id, timeout=30)
    print("after an instant snapshot:", sorted(f.key for f in results.list_files()))
    time.sleep(3)
    print("a few seconds later:      ", sorted(f.key for f in results.list_files()))

    task.wait(timeout=60)
    print(f"task {task.state}:", sorted(f.key for f in results.list_files()))
finally:
    results.delete()
