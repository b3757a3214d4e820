"""A job whose tasks form a small DAG, with a branch that only runs when a step fails.

    prepare ──► train ──► publish          (publish needs train to succeed)
                  └─────► report-failure   (runs only if train fails or is cancelled)

``train`` fails on purpose (``exit 3``): ``publish`` can no longer run, so it ends Cancelled with
an error naming its parent, while ``report-failure`` runs. Then the job is terminated and waited
for. Dependencies need a job created with ``use_dependencies=True``.

Run it with ``python samples/job_pipeline.py`` after ``qcompute up``.
"""
import qcompute
from qcompute.dependencies import AdvancedDependency

conn = qcompute.Connection()
job = conn.create_job("sample pipeline", use_dependencies=True).submit()


def step(name, command, after=(), when=None):
    task = conn.create_task(name, "docker-batch", job=job)
    task.constants["DOCKER_CMD"] = command
    if when:
        task.set_task_advanced_dependencies([AdvancedDependency(p.uuid, when) for p in after])
    elif after:
        task.set_task_dependencies_from_tasks(after)
    return task.submit()


prepare = step("prepare", "echo data ready")
train = step("train", "sh -c 'echo training...; exit 3'", after=[prepare])
publish = step("publish", "echo publishing the model", after=[train])
report = step("report-failure", "echo training failed, paging someone", after=[train],
              when=["failure", "cancelled"])

conn.wait_tasks([prepare, train, publish, report], timeout=120)
for task in (prepare, train, publish, report):
    why = f"  ({task.errors[0].message})" if task.errors else ""
    print(f"{task.name:15} {task.state}{why}")
print(report.stdout(), end="")

job.terminate()
job.wait(timeout=60)
print(f"job {job.state}")
