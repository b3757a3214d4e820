"""Hello world: run one command on the cluster and print what it wrote.

Shows the smallest complete task: a connection from the default config (the one ``qcompute up``
writes), a ``docker-batch`` task whose ``DOCKER_CMD`` constant is the command, ``run()`` to
submit it and wait for it to end, and ``stdout()`` to read its output.

Run it with ``python samples/hello_world.py`` after ``qcompute up``. It prints
``hello world from 0!``.
"""
import qcompute

conn = qcompute.Connection()
task = conn.create_task("hello world", "docker-batch")
task.constants["DOCKER_CMD"] = "echo hello world from ${INSTANCE_ID}!"
task.run()
print(task.stdout(), end="")
