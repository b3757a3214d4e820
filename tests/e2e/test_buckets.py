"""Buckets against the real SeaweedFS of the embedded cluster, through the SDK."""
from __future__ import annotations

import os

import pytest

import qcompute


@pytest.fixture
def bucket(conn, request):
    name = f"e2e-{request.node.name.replace('_', '-')}"[:63].lower()
    created = conn.create_bucket(name)
    yield created
    created.delete()


def _transfers(calls: list) -> set[str]:
    return {name for _read, _total, name in calls}


def test_sync_directory_round_trip(conn, bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    (src / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # multipart (8 MiB parts)
    calls: list = []
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert sorted(bucket.list_files()) == ["a.txt", "big.bin", "sub/b.txt"]
    assert _transfers(calls) == {"a.txt", "big.bin", "sub/b.txt"}

    calls.clear()
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert calls == [], "an unchanged directory must transfer nothing (multipart ETags match)"

    (src / "a.txt").write_text("ALPHA!")
    (src / "sub" / "b.txt").unlink()
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert _transfers(calls) == {"a.txt"}
    assert sorted(bucket.list_files()) == ["a.txt", "big.bin"]

    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    assert (out / "a.txt").read_text() == "ALPHA!"
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def test_files_strings_and_prefixes(conn, bucket, tmp_path):
    local = tmp_path / "x.txt"
    local.write_text("from a file")
    bucket["docs/x.txt"] = str(local)
    bucket.add_string("hello", "docs\\notes\\y.txt")  # Windows separators become POSIX keys
    assert sorted(bucket.directory("docs/")) == ["docs/notes/y.txt", "docs/x.txt"]
    target = bucket.get_file("docs/notes/y.txt", str(tmp_path / "y.txt"))
    assert open(target).read() == "hello"
    bucket.delete_file("docs/x.txt")
    assert bucket.list_files() == ["docs/notes/y.txt"]


def test_bucket_lookup_and_creation_are_idempotent(conn, bucket):
    assert conn.retrieve_bucket(bucket.name).name == bucket.name
    assert conn.create_bucket(bucket.name).name == bucket.name  # already ours: fine
    assert bucket.name in [b.name for b in conn.buckets()]
    with pytest.raises(qcompute.MissingBucketException, match="e2e-no-such-bucket"):
        conn.retrieve_bucket("e2e-no-such-bucket")


# ----------------------------------------------------------------------------- the sync engine
@pytest.fixture(autouse=True)
def etag_cache(tmp_path, monkeypatch):
    """Each test has its own ETag cache (not the user's)."""
    monkeypatch.setenv("QCOMPUTE_CACHE_DIR", str(tmp_path / "etag-cache"))


def _tree(root, files: dict[str, bytes]):
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_duplicates_and_renames_are_copied_on_the_server(conn, bucket, tmp_path):
    blob = os.urandom(64 * 1024)
    src = _tree(tmp_path / "src", {"one.bin": blob, "dir/two.bin": blob, "c.txt": b"charlie"})
    calls: list = []
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    uploaded = _transfers(calls)
    assert uploaded in ({"one.bin", "c.txt"}, {"dir/two.bin", "c.txt"}), uploaded
    assert calls[-1][:2] == (len(blob) + 7, len(blob) + 7)  # the copy moved no bytes
    assert sorted(bucket.list_files()) == ["c.txt", "dir/two.bin", "one.bin"]

    (src / "c.txt").rename(src / "renamed.txt")  # a rename: a server-side copy, then a delete
    (src / "three.bin").write_bytes(blob)  # content the bucket already holds
    calls.clear()
    bucket.sync_directory(str(src), progress=lambda *call: calls.append(call))
    assert calls == []
    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "dir/two.bin", "one.bin", "renamed.txt", "three.bin"]
    assert (out / "three.bin").read_bytes() == blob
    assert (out / "renamed.txt").read_bytes() == b"charlie"


def test_an_interrupted_sync_resumes(conn, bucket, tmp_path):
    src = _tree(tmp_path / "src", {f"part/{i:03d}.dat": os.urandom(1000 + i) for i in range(60)})
    seen: list[str] = []

    def stop_after_ten(read, total, name):
        seen.append(name)
        if len(seen) >= 10:
            raise RuntimeError("network lost")

    with pytest.raises(RuntimeError, match="network lost"):
        bucket.sync_directory(str(src), remote="run", progress=stop_after_ten)
    present = set(bucket.directory("run/"))
    assert 10 <= len(present) < 60
    calls: list = []
    bucket.sync_directory(str(src), remote="run", progress=lambda *call: calls.append(call))
    again = _transfers(calls)
    assert again.isdisjoint(present) and again | present == set(bucket.directory("run/"))
    assert len(bucket.directory("run/")) == 60


def test_downloads_skip_identical_files(conn, bucket, tmp_path):
    src = _tree(tmp_path / "src", {"a.txt": b"alpha", "sub/b.txt": b"bravo",
                                   "big.bin": os.urandom(9 * 1024 * 1024)})
    bucket.sync_directory(str(src), remote="job-1")
    bucket.add_string("elsewhere", "other/x.txt")
    out = tmp_path / "out"
    calls: list = []
    paths = bucket.sync_remote_to_local(str(out), remote="job-1",
                                        progress=lambda *call: calls.append(call))
    assert sorted(os.path.relpath(p, out) for p in paths) == ["a.txt", "big.bin",
                                                              os.path.join("sub", "b.txt")]
    assert _transfers(calls) == {"job-1/a.txt", "job-1/big.bin", "job-1/sub/b.txt"}
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()

    (out / "a.txt").write_bytes(b"ALPHA")  # same size, other content
    (out / "sub" / "b.txt").unlink()
    (out / "mine.txt").write_text("a local file with no object: kept")
    calls.clear()
    bucket.sync_remote_to_local(str(out), remote="job-1", progress=lambda *call: calls.append(call))
    assert _transfers(calls) == {"job-1/a.txt", "job-1/sub/b.txt"}  # big.bin: identical, kept
    assert (out / "a.txt").read_bytes() == b"alpha" and (out / "mine.txt").exists()

    calls.clear()
    bucket.get_all_files(str(tmp_path / "all"), progress=lambda *call: calls.append(call))
    assert "other/x.txt" in _transfers(calls)


def test_a_refused_bucket_name_names_the_prefix(conn, cluster):
    created = conn._http.post("/admin/users", json={"email": f"carol.{os.getpid()}@example.com"})
    prefix = created["bucketPrefix"]
    with qcompute.Connection(cluster_url=cluster.url, client_token=created["token"],
                             storage_url=conn.storage_url, retry_count=0) as carol:
        with pytest.raises(qcompute.StorageError, match=f"must start with '{prefix}'") as caught:
            carol.create_bucket("e2e-not-carols")
        assert caught.value.code == "AccessDenied"
        mine = carol.create_bucket(f"{prefix}data")
        mine.add_string("ok", "k.txt")
        assert mine.list_files() == ["k.txt"]
        mine.delete()


def test_results_progress_on_task_run(conn, tmp_path):
    results = conn.create_bucket("e2e-results-progress")
    try:
        task = conn.create_task("results progress", "docker-batch")
        task.results = results
        task.constants["DOCKER_CMD"] = "sh -c 'printf 0123456789 > ten.txt; printf abc > three.txt'"
        calls: list = []
        task.run(output_dir=str(tmp_path / "out"), results_progress=lambda *c: calls.append(c))
        assert task.state == qcompute.TaskState.SUCCESS, task.errors
        assert _transfers(calls) == {"ten.txt", "three.txt"}
        assert calls[-1][:2] == (13, 13)
        assert (tmp_path / "out" / "ten.txt").read_text() == "0123456789"
        calls.clear()
        task.download_results(str(tmp_path / "out"), progress=lambda *c: calls.append(c))
        assert calls == []  # already there and identical
    finally:
        results.delete()


def test_odd_key_names_take_the_direct_path(conn, bucket, tmp_path):
    names = {"a b+c%d~e.txt": b"1", "été/ü.txt": b"2", "x=y&z;(1)'!*.txt": b"3"}
    src = _tree(tmp_path / "src", names)
    bucket.sync_directory(str(src))
    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    for name, data in names.items():
        assert (out / name).read_bytes() == data
    assert sorted(bucket.list_files()) == sorted(names)
    assert conn._storage._direct._misses == 0  # signed and sent without falling back to boto3


# ----------------------------------------------------------------------------- Qarnot's names
@pytest.mark.parametrize("name", ["meshroomIn", "autodock_vina-demo-input"])
def test_bucket_names_of_qarnot_samples(conn, tmp_path, name):
    """Upper case and '_', refused by SeaweedFS's CreateBucket, work as on Qarnot."""
    bucket = conn.create_bucket(name)
    assert conn.create_bucket(name).name == name  # ours already: fine
    src = _tree(tmp_path / "src", {"scene/a.obj": b"vertices", "b.txt": b"bravo",
                                   "big.bin": os.urandom(9 * 1024 * 1024)})
    bucket.sync_directory(str(src))
    bucket.add_string("notes", "docs/notes.txt")
    assert sorted(bucket.list_files()) == ["b.txt", "big.bin", "docs/notes.txt", "scene/a.obj"]
    assert conn.retrieve_bucket(name).name == name and name in [b.name for b in conn.buckets()]
    out = tmp_path / "out"
    bucket.get_all_files(str(out))
    assert (out / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert (out / "scene" / "a.obj").read_bytes() == b"vertices"
    bucket.delete()
    assert name not in [b.name for b in conn.buckets()]


def test_a_task_reads_and_writes_buckets_with_qarnot_names(conn, tmp_path):
    resources, results = conn.create_bucket("meshroomIn"), conn.create_bucket("meshroomOut_1")
    try:
        resources.add_string("scene data\n", "in.txt")
        task = conn.create_task("qarnot names", "docker-batch")
        task.resources = [resources]
        task.results = results
        task.constants["DOCKER_CMD"] = "cp in.txt copied.txt"
        task.run(output_dir=str(tmp_path / "out"), job_timeout=60)
        assert task.state == qcompute.TaskState.SUCCESS, task.errors
        assert results.list_files() == ["copied.txt"]
        assert (tmp_path / "out" / "copied.txt").read_text() == "scene data\n"
    finally:
        for bucket in (resources, results):
            bucket.delete()


def test_a_missing_result_bucket_with_a_qarnot_name_is_made_at_submit(conn, tmp_path):
    """SeaweedFS makes a missing result bucket at the first upload, but not one it refuses to
    create (``meshroomNew_Out``): the server makes that one when the task is submitted."""
    task = conn.create_task("missing results bucket", "docker-batch")
    task.results = qcompute.bucket.Bucket(conn, "meshroomNew_Out", create=False)
    task.constants["DOCKER_CMD"] = "touch done.txt"
    task.run(output_dir=str(tmp_path / "out"), job_timeout=60)
    assert task.state == qcompute.TaskState.SUCCESS, task.errors
    assert task.results.list_files() == ["done.txt"]
    task.results.delete()


@pytest.mark.parametrize("name, reason", [
    ("bk", "it has 2 characters"), ("a..b", "it must not contain '..'"),
    ("-x-", "it must start and end with a letter or a digit")])
def test_names_qarnot_refuses_get_a_clear_error(conn, name, reason):
    with pytest.raises(qcompute.StorageError, match=f"not a valid bucket name: {reason}") as caught:
        conn.create_bucket(name)
    assert caught.value.code == "InvalidBucketName"
    task = conn.create_task("bad bucket", "docker-batch")
    task.constants["DOCKER_CMD"] = "true"
    task.results = qcompute.bucket.Bucket(conn, name, create=False)
    with pytest.raises(qcompute.BadRequestError, match=f"resultBucket: '{name}' is not a valid"):
        task.submit()
