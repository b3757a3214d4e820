"""A static pool: slots held and prepared once, then several tasks run inside them.

Shows ``create_pool`` with a preparation task (it runs once on each slot before any task: here
it writes a shared file), pool constants that every task inside sees, two tasks submitted into
the pool, ``Pool.wait`` for a state, and ``close()`` giving the slots back.

Run it with ``python samples/pool.py`` after ``qcompute up``.
"""
import tempfile
from pathlib import Path

import qcompute
from qcompute import PoolState

conn = qcompute.Connection()
shared = Path(tempfile.mkdtemp(prefix="qcompute-pool-")) / "dictionary.txt"

pool = conn.create_pool("sample pool", "docker-batch", instancecount=1)
pool.constants["WORD"] = "pool"
pool.preparation_task = f"echo preparing slot $SLOT_ID; printf 'alpha\\nbeta\\n' > {shared}"
pool.submit()
pool.wait(PoolState.FULLY_EXECUTING, timeout=60)
print(pool.stdout(), end="")

tasks = []
for n in range(2):
    task = conn.create_task(f"pool task {n}", pool)
    task.constants["DOCKER_CMD"] = f"echo task {n} in the $WORD reads: $(wc -l < {shared}) lines"
    tasks.append(task.submit())
conn.wait_tasks(tasks, timeout=60)
for task in tasks:
    print(f"{task.name}: {task.state}: {task.stdout()}", end="")

pool.close()
pool.wait(PoolState.CLOSED, timeout=60)
print(f"pool {pool.state}")
