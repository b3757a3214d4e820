"""The official SDK's snapshot calls on a running task (periodic ``snapshot()``, ``instant()``,
``snapshot_status()``, ``wait_snapshot()``) and ``update_resources()``.

``wait_snapshot`` sleeps 10 s between polls, so the tests poll ``snapshot_status`` every 0.1 s
and call ``wait_snapshot`` once the snapshot is final (it then returns at once). The SDK's
``Snapshot`` has no public accessors: its ``_status``/``_snapshot_config``/... are what its own
``wait_snapshot`` reads."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest
from qarnot.exceptions import UnauthorizedException

from tests.helpers import sh

from .helpers import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:(flush|update) is deprecated as of 2.6.0")

T = TypeVar("T")

# Copies b.txt (a resource added later) into its results once it appears, ticks meanwhile, and
# stops when stop.txt appears.
COMMAND = sh('mkdir -p out; i=0; seen=; echo ready; '
           'while [ ! -f stop.txt ]; do '
           'i=$((i+1)); echo "$i" > out/tick.txt; '
           'if [ -f b.txt ] && [ -z "$seen" ]; then seen=1; cp b.txt out/b-copy.txt; '
           'echo "got $(cat b.txt)"; fi; '
           'sleep 0.1; done; echo stopped')


def _until(probe: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.1)
    return value


def test_snapshots_and_resource_updates_of_a_running_task(qconn, bucket_name):
    resources = qconn.create_bucket(bucket_name("snap-in"))
    resources.add_string("v1\n", "a.txt")
    results = qconn.create_bucket(bucket_name("snap-out"))

    def keys() -> set[str]:
        return {obj.key for obj in results.list_files()}

    task = qconn.create_task("compat-snapshots", "docker-batch", 1)
    task.resources = [resources]
    task.results = results
    task.constants["DOCKER_CMD"] = COMMAND
    task.snapshot(1)  # before submit: kept, and POSTed (interval only) right after submit
    task.submit()
    try:
        assert task.snapshot_interval == 1
        _until(lambda: "ready" in task.stdout(), "the command's start")

        # periodic rounds upload the results while the command runs
        _until(lambda: "out/tick.txt" in keys(), "a periodic snapshot")
        task.update(True)
        assert task.state == "FullyExecuting"
        assert "a.txt" not in keys()  # an unmodified resource is not a result

        # instant(bucket=Bucket) sends the bucket's name: fine (unlike snapshot(), below)
        snap_id = task.instant(whitelist=r"^out/", bucket=results, bucket_prefix="now/")
        assert snap_id
        snap = _until(lambda: (s := task.snapshot_status(snap_id))._status.is_completed and s,
                      "the instant snapshot")
        assert snap._status.status == "Success"
        assert snap._id == snap_id and snap._task_uuid == task.uuid
        assert (snap._snapshot_config._whitelist, snap._snapshot_config._bucket_name,
                snap._snapshot_config._bucket_prefix) == (r"^out/", results.uuid, "now/")
        assert snap._transferred_size == snap._size_to_upload > 0
        assert task.wait_snapshot(snap_id, timeout=5) is True  # already final: no 10 s sleep
        assert "now/out/tick.txt" in keys()
        task.update(True)  # task.status is served from the SDK's 5 s cache otherwise
        assert "now/out/tick.txt" in task.status.running_instances_info.snapshot_results

        # SDK bug (2.23.0): snapshot(bucket=Bucket) puts the Bucket object in the JSON body
        # (TypeError: not JSON serializable) before anything is sent; its bucket_name is passed
        # through as given, so give the bucket's name instead.
        with pytest.raises(TypeError, match="JSON serializable"):
            task.snapshot(1, bucket=results, bucket_prefix="periodic/")
        task.snapshot(1, whitelist=r"b-copy", bucket=results.uuid, bucket_prefix="periodic/")
        with pytest.raises(ValueError):  # a 400 (the interval must be positive)
            task.snapshot(0)

        # update_resources() (PATCH /tasks/{uuid}, no body) brings a new file to the instance
        resources.add_string("new\n", "b.txt")
        task.update_resources()
        _until(lambda: "got new" in task.stdout(), "the refreshed resource")
        _until(lambda: "periodic/out/b-copy.txt" in keys(), "a snapshot with the new settings")
        assert "periodic/out/tick.txt" not in keys()  # whitelisted out

        resources.add_string("", "stop.txt")
        task.update_resources()
        assert wait_for(task, timeout=30) == "Success", task.errors
        assert task.stdout().endswith("stopped\n")
    finally:
        if task.state not in ("Success", "Failure", "Cancelled"):
            task.abort()
    final = {k for k in keys() if not k.startswith(("now/", "periodic/"))}
    assert final == {"out/tick.txt", "out/b-copy.txt"}
    # a task that has ended refuses snapshots and resource updates (403 task_not_running)
    with pytest.raises(UnauthorizedException):
        task.instant()
    with pytest.raises(UnauthorizedException):
        task.snapshot(5)
    task.delete(purge_resources=True, purge_results=True)
