"""A static pool: slots held and prepared once, then several tasks run inside them.

Shows ``create_pool`` with a preparation task (it runs once on each slot before any task: here
it writes a file in ``/share``, the directory a pool's preparation runs and tasks share), pool
constants that every task inside sees, two tasks submitted into the pool, ``Pool.wait`` for a
state, and ``close()`` giving the slots back. Commands run without a shell, as on a Qarnot node:
``sh -c '…'`` where one is needed.

Run it with ``python samples/pool.py`` after ``qcompute up``.
"""
import qcompute
from qcompute import PoolState

conn = qcompute.Connection()

pool = conn.create_pool("sample pool", "docker-batch", instancecount=1)
pool.constants["WORD"] = "pool"
pool.preparation_task = ("sh -c 'echo preparing slot $SLOT_ID; "
                         "printf \"alpha\\nbeta\\n\" > /share/dictionary.txt'")
pool.submit()
pool.wait(PoolState.FULLY_EXECUTING, timeout=60)
print(pool.stdout(), end="")

tasks = []
for n in range(2):
    task = conn.create_task(f"pool task {n}", pool)
    task.constants["DOCKER_CMD"] = (f"sh -c 'echo task {n} in the $WORD reads: "
                                    "$(wc -l < /share/dictionary.txt) lines'")
    tasks.append(task.submit())
conn.wait_tasks(tasks, timeout=60)
for task in tasks:
    print(f"{task.name}: {task.state}: {task.stdout()}", end="")

pool.close()
pool.wait(PoolState.CLOSED, timeout=60)
print(f"pool {pool.state}")
