"""Several instances, with their output read while they run.

Shows a task of 4 instances: each prints a few lines with sleeps in between. The script submits
the task without waiting (``submit()``), then loops: it prints whatever output arrived since the
previous read (``fresh_stdout()``) until ``wait(timeout=...)`` says the task has ended, prints
what came last, and the final state.

Run it with ``python samples/instances.py`` after ``qcompute up``.
"""
import qcompute

conn = qcompute.Connection()
task = conn.create_task("four instances", "docker-batch", 4)
task.constants["DOCKER_CMD"] = (  # ${NAME} is filled in by the cluster; the loop needs a shell
    "sh -c 'for step in 1 2 3; do "
    "echo \"instance ${INSTANCE_ID} of ${INSTANCE_COUNT}: step $step\"; "
    "sleep 1; "
    "done'"
)
task.submit()

while not task.wait(timeout=0.5):
    print(task.fresh_stdout(), end="", flush=True)
print(task.fresh_stdout(), end="")

print(f"final state: {task.state}")
