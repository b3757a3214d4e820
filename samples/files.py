"""Files in and out: upload an input file, transform it in a task, download the result.

Shows resource and result buckets: the script creates a resource bucket and uploads
``samples/input/lorem.txt`` to it, creates an empty result bucket, and runs a task whose
command upper-cases the file (``tr a-z A-Z < lorem.txt > LOREM.txt``) in its working directory,
where the resources were downloaded. The runner uploads the new file to the result bucket, and
``run(output_dir="output")`` downloads that bucket into ``./output``. The script prints the
result file, then deletes both buckets.

Run it with ``python samples/files.py`` after ``qcompute up``.
"""
import os
import uuid

import qcompute

HERE = os.path.dirname(os.path.abspath(__file__))
SUFFIX = uuid.uuid4().hex[:8]  # bucket names are global: make them unique per run

conn = qcompute.Connection()
resources = conn.create_bucket(f"qcompute-sample-input-{SUFFIX}")
try:
    results = conn.create_bucket(f"qcompute-sample-output-{SUFFIX}")
    try:
        resources.add_file(os.path.join(HERE, "input", "lorem.txt"), "lorem.txt")

        task = conn.create_task("upper-case lorem", "docker-batch")
        task.resources = [resources]
        task.results = results
        task.constants["DOCKER_CMD"] = "sh -c 'tr a-z A-Z < lorem.txt > LOREM.txt'"
        task.run(output_dir="output")

        if task.state != qcompute.TaskState.SUCCESS:
            print(f"the task ended in state {task.state}:", *task.errors, sep="\n  ")
            print(task.stderr(), end="")
            raise SystemExit(1)
        with open(os.path.join("output", "LOREM.txt"), encoding="utf-8") as result:
            print(result.read(), end="")
    finally:
        results.delete()
finally:
    resources.delete()
