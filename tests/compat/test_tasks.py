"""The official SDK's task calls: submit and run, output, ranges, bulk submit, paging, abort,
commit, delete. The SDK's wait() polls every 10 s, so tests submit and poll with ``wait_for``;
only ``test_run`` pays for the real ``run()``."""
from __future__ import annotations

import uuid

import pytest
from qarnot.exceptions import MissingTaskException, MissingTaskInstanceException

from tests.helpers import sh

from .helpers import S3Calls, wait_for

# The SDK calls its own deprecated Bucket.flush() / update() on submit and delete.
pytestmark = pytest.mark.filterwarnings("ignore:(flush|update) is deprecated as of 2.6.0")


def _task(qconn, name: str, command: str, instances=1):
    task = qconn.create_task(name, "docker-batch", instances)
    task.constants["DOCKER_CMD"] = command
    return task


def test_run(qconn, bucket_name, tmp_path):
    """run(output_dir): submit, wait (the SDK's own 10 s polling), download the result bucket."""
    resources = qconn.create_bucket(bucket_name("res"))
    resources.add_string("hello compat\n", "in/lorem.txt")
    results = qconn.create_bucket(bucket_name("out"))
    task = _task(qconn, "compat-run",
                 sh("tr a-z A-Z < in/lorem.txt > LOREM.txt && echo done $INSTANCE_ID"))
    task.resources = [resources]
    task.results = results
    # Not run(job_timeout=...): the SDK then calls abort() even on a finished task (§8.5).
    task.run(output_dir=str(tmp_path / "results"))
    assert task.state == "Success"
    assert (tmp_path / "results" / "LOREM.txt").read_text() == "HELLO COMPAT\n"
    assert task.stdout() == "done 0\n"
    assert [i.instance_id for i in task.completed_instances] == [0]
    assert task.completed_instances[0].state == "Success"
    task.delete(purge_resources=True, purge_results=True)


def test_buckets_with_qarnot_names(qconn, compat_user, tmp_path):
    """Resources from a ``meshroomIn`` bucket, results to an upper-case bucket with '_'."""
    prefix = compat_user["bucketPrefix"]
    resources = qconn.create_bucket(prefix + "meshroomIn")
    resources.add_string("scene data\n", "in.txt")
    results = qconn.create_bucket(prefix + "meshroomOut_1")
    task = _task(qconn, "compat-qarnot-names", "cp in.txt copied.txt")
    task.resources = [resources]
    task.results = results
    task.submit()
    assert wait_for(task) == "Success", task.errors
    again = qconn.retrieve_task(task.uuid)  # its buckets send CreateBucket: a 200 here too
    assert (again.results.uuid, again.resources[0].uuid) == (results.uuid, resources.uuid)
    again.results.get_file("copied.txt", str(tmp_path / "copied.txt"))
    assert (tmp_path / "copied.txt").read_text() == "scene data\n"
    again.delete(purge_resources=True, purge_results=True)
    names = [bucket.uuid for bucket in qconn.buckets()]
    assert resources.uuid not in names and results.uuid not in names


def test_stdout_and_fresh_stdout(qconn):
    task = _task(qconn, "compat-output", sh("echo out-$INSTANCE_ID; echo err-$INSTANCE_ID >&2"), 2)
    task.submit()
    assert wait_for(task) == "Success"
    assert sorted(task.stdout().splitlines()) == ["out-0", "out-1"]
    assert task.stderr(instanceId=1) == "err-1\n"
    assert task.stdout(instanceId=0) == "out-0\n"
    assert sorted(task.fresh_stdout().splitlines()) == ["out-0", "out-1"]
    assert task.fresh_stdout() == ""  # the read cursor moved
    assert task.fresh_stderr(instanceId=0) == "err-0\n"
    assert task.fresh_stderr(instanceId=0) == ""
    assert task.stdout() != ""  # stdout() always gives everything
    with pytest.raises(MissingTaskInstanceException):
        task.stdout(instanceId=7)
    task.delete()


def test_advanced_range_and_instance_variables(qconn):
    """instancecount 0 + advanced_range, as Qarnot's Blender sample does; the payload sees
    INSTANCE_ID and its old alias FRAME_ID (the range's values), QRANK/QSIZE (rank and size)."""
    task = _task(qconn, "compat-range",  # ${NAME} is filled in by the cluster: no shell needed
                 "echo id=${INSTANCE_ID} frame=${FRAME_ID} rank=${QRANK} size=${QSIZE}", 0)
    task.advanced_range = "3-5,9"
    task.submit()
    assert wait_for(task) == "Success"
    assert task.advanced_range == "3-5,9"
    assert sorted(i.instance_id for i in task.completed_instances) == [3, 4, 5, 9]
    lines = sorted(task.stdout().splitlines())
    assert lines == [f"id={i} frame={i} rank={r} size=4" for r, i in enumerate([3, 4, 5, 9])]
    assert task.stdout(instanceId=9) == "id=9 frame=9 rank=3 size=4\n"
    assert task.status.succeeded_range == "3-5,9"
    # the string form of create_task sets the range itself
    other = _task(qconn, "compat-range-str", "echo ${INSTANCE_ID}", "1-2")
    assert other.advanced_range == "1-2"
    other.submit()
    assert wait_for(other) == "Success"
    assert sorted(other.stdout().split()) == ["1", "2"]
    for done in (task, other):
        done.delete()


def test_bulk_submit_and_paging_by_tags(qconn):
    tag = f"compat-{uuid.uuid4().hex[:8]}"
    tasks = []
    for n in range(3):
        task = _task(qconn, f"compat-bulk-{n}", f"echo bulk {n}")
        task.tags = [tag, f"{tag}-{n % 2}"]  # tasks 0 and 2 share the second tag
        tasks.append(task)
    qconn.submit_tasks(tasks)
    assert all(task.uuid for task in tasks)
    for task in tasks:
        assert wait_for(task) == "Success"
    uuids = {task.uuid for task in tasks}

    def page_uuids(**filters) -> set[str]:
        return {task.uuid for task in qconn.tasks_page(**filters).page_data}

    assert page_uuids(tags=[tag]) == uuids
    assert page_uuids(tags=[f"{tag}-0", f"{tag}-1"]) == uuids  # tags: any of them
    assert page_uuids(tags_intersect=[tag, f"{tag}-0"]) == {tasks[0].uuid, tasks[2].uuid}
    assert page_uuids(tags=[tag], summary=False) == uuids
    assert {task.uuid for task in qconn.all_tasks(tags=[tag])} == uuids
    assert uuids <= {task.uuid for task in qconn.all_tasks()}  # summaries, no filter

    seen, token, pages = [], None, 0
    while True:  # one task per page, following the tokens
        page = qconn.tasks_page(token=token, maximum=1, tags=[tag])
        seen += [task.uuid for task in page.page_data]
        pages += 1
        if not page.is_truncated:
            break
        token = page.next_token
    assert sorted(seen) == sorted(uuids) and pages >= 3
    summary = next(t for t in qconn.tasks_page(tags=[tag]).page_data if t.uuid == tasks[1].uuid)
    assert summary.name == "compat-bulk-1" and summary.state == "Success"
    for task in tasks:
        task.delete()


def test_abort(qconn):
    task = _task(qconn, "compat-abort", sh("echo started; sleep 60"))
    task.submit()
    wait_for(task, ["FullyExecuting"], timeout=30)
    task.abort()
    assert wait_for(task) == "Cancelled"
    assert task.completed_instances[0].state == "Cancelled"
    task.delete()


def test_retrieve_commit_and_delete_with_purge(qconn, bucket_name):
    resources = qconn.create_bucket(bucket_name("res"))
    resources.add_string("input\n", "in.txt")
    results = qconn.create_bucket(bucket_name("out"))
    task = _task(qconn, "compat-retrieve", "cp in.txt out.txt")
    task.resources = [resources]
    task.results = results
    task.tags = ["before"]
    task.submit()
    assert wait_for(task) == "Success"

    again = qconn.retrieve_task(task.uuid)
    assert (again.name, again.state, again.tags) == ("compat-retrieve", "Success", ["before"])
    with S3Calls(qconn) as s3:
        # Reading buckets of a retrieved task builds Bucket objects that send CreateBucket of
        # buckets the user owns: fine on Qarnot, and through the S3 front here.
        assert again.results.uuid == results.uuid
        assert [bucket.uuid for bucket in again.resources] == [resources.uuid]
    assert "CreateBucket" in s3.operations
    assert again.results.list_files()[0].key == "out.txt"

    # The SDK refuses to set the name of a submitted task (AttributeError): tags are the field it
    # lets users change and commit (PUT of the whole document).
    with pytest.raises(AttributeError):
        again.name = "renamed"
    again.tags = ["after", "more"]
    again.commit()
    assert qconn.retrieve_task(task.uuid).tags == ["after", "more"]

    again.delete(purge_resources=True, purge_results=True)
    with pytest.raises(MissingTaskException):
        qconn.retrieve_task(task.uuid)
    names = [bucket.uuid for bucket in qconn.buckets()]
    assert resources.uuid not in names and results.uuid not in names
