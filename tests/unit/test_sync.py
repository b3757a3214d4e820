"""The sync engine without a network: the ETag cache, upload and download planning, Windows keys,
and running plans on the in-memory storage (interruptions, copies, progress)."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path, PureWindowsPath
from typing import Any

import pytest

from qcompute import Bucket, Connection, StorageError
from qcompute._etags import EtagCache, Etags, LocalFile, scan_directory, scan_files
from qcompute._storage import ObjectInfo, etag_for_label, normalize_key
from qcompute._sync import plan_download, plan_upload, run_upload, safe_target

from .helpers import FakeStorage, write

HOUR_AGO = time.time() - 3600


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def old_file(path: Path, data: bytes) -> str:
    """A file last written an hour ago (its cache entry can be trusted)."""
    write(path, data)
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    return str(path)


class Counting:
    """An ETag function that counts the files it reads."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, path: str, label: str) -> str:
        self.calls.append((os.path.basename(path), label))
        return etag_for_label(path, label)


@pytest.fixture
def cache_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QCOMPUTE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "etags.sqlite3"


def etags(cache_path: Path, counter: Counting) -> Etags:
    return Etags(EtagCache(cache_path), etag_of=counter)


def listing(**objects: bytes) -> dict[str, ObjectInfo]:
    return {key.replace("__", "/"): ObjectInfo(key.replace("__", "/"), md5(data), len(data))
            for key, data in objects.items()}


# ----------------------------------------------------------------------------- the ETag cache
def test_cache_hits_avoid_hashing(tmp_path: Path, cache_path: Path) -> None:
    files = {f"f{i}": old_file(tmp_path / "src" / f"f{i}", b"x%04d" % i) for i in range(5)}
    remote = {k: ObjectInfo(k, md5(Path(p).read_bytes()), 5) for k, p in files.items()}
    counter = Counting()
    first = etags(cache_path, counter)
    plan = plan_upload(scan_files(files), remote, first)
    first.save()
    assert len(plan.unchanged) == 5 and len(counter.calls) == 5

    counter.calls.clear()
    again = etags(cache_path, counter)
    assert len(plan_upload(scan_files(files), remote, again).unchanged) == 5
    assert counter.calls == [] and again.computed == 0  # every ETag came from the cache

    Path(files["f3"]).write_bytes(b"y0003")  # same size, new content, new mtime
    counter.calls.clear()
    plan = plan_upload(scan_files(files), remote, etags(cache_path, counter))
    assert counter.calls == [("f3", "md5")]
    assert [f.key for f in plan.upload] == ["f3"]


def test_a_file_written_just_before_it_was_hashed_is_hashed_again(tmp_path: Path,
                                                                  cache_path: Path) -> None:
    path = write(tmp_path / "fresh", b"fresh")  # mtime = now: it may change in the same tick
    remote = {"fresh": ObjectInfo("fresh", md5(b"fresh"), 5)}
    counter = Counting()
    for _ in range(2):
        current = etags(cache_path, counter)
        plan_upload(scan_files({"fresh": path}), remote, current)
        current.save()
    assert len(counter.calls) == 2


def test_a_corrupt_cache_is_started_again(tmp_path: Path, cache_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    cache_path.parent.mkdir(parents=True)
    cache_path.write_bytes(b"this is not a database" * 100)
    path = old_file(tmp_path / "a", b"alpha")
    counter = Counting()
    current = etags(cache_path, counter)
    plan = plan_upload(scan_files({"a": path}), {"a": ObjectInfo("a", md5(b"alpha"), 5)}, current)
    current.save()
    assert plan.unchanged == ("a",) and "corrupt" in caplog.text
    with sqlite3.connect(cache_path) as db:  # a valid cache again, holding the new entry
        assert db.execute("SELECT count(*) FROM etags").fetchone() == (1,)


def test_an_unwritable_cache_only_costs_hashing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    counter = Counting()
    current = Etags(EtagCache(blocker / "sub" / "etags.sqlite3"), etag_of=counter)
    path = old_file(tmp_path / "a", b"alpha")
    plan = plan_upload(scan_files({"a": path}), {"a": ObjectInfo("a", md5(b"alpha"), 5)}, current)
    current.save()
    assert plan.unchanged == ("a",) and len(counter.calls) == 1


def test_cache_size_is_bounded(tmp_path: Path) -> None:
    cache = EtagCache(tmp_path / "etags.sqlite3", max_entries=10)
    current = Etags(cache)
    for i in range(25):
        path = old_file(tmp_path / f"f{i}", b"%02d" % i)
        current.record(scan_files({"k": path})["k"], "md5", md5(b"%02d" % i), time.time_ns())
    current.save()
    with sqlite3.connect(tmp_path / "etags.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM etags").fetchone()
    assert 0 < count <= 10


# ----------------------------------------------------------------------------- upload planning
def test_duplicates_and_renames_are_planned_as_copies(tmp_path: Path, cache_path: Path) -> None:
    src = tmp_path / "src"
    local = {
        "a.txt": old_file(src / "a.txt", b"same content"),
        "b.txt": old_file(src / "b.txt", b"same content"),      # duplicate of a new file
        "renamed.txt": old_file(src / "renamed.txt", b"zulu"),   # was old.txt remotely
        "copy-of-keep.txt": old_file(src / "ck.txt", b"whisky"),  # what keep.txt holds
        "keep.txt": old_file(src / "keep.txt", b"whisky"),
        "unique.bin": old_file(src / "unique.bin", b"a size nobody else has"),
    }
    remote = listing(**{"old.txt": b"zulu", "keep.txt": b"whisky"})
    counter = Counting()
    plan = plan_upload(scan_files(local), remote, etags(cache_path, counter), delete_prefix="")
    assert [f.key for f in plan.upload] == ["a.txt", "unique.bin"]
    assert {(c.source, c.key, c.etag) for c in plan.copy} == {
        ("a.txt", "b.txt", None),                          # uploaded once, copied once
        ("old.txt", "renamed.txt", md5(b"zulu")),          # a rename: no upload
        ("keep.txt", "copy-of-keep.txt", md5(b"whisky")),  # content already in the bucket
    }
    assert plan.delete == ("old.txt",) and plan.unchanged == ("keep.txt",)
    assert "unique.bin" not in {name for name, _ in counter.calls}  # its size is unique


def test_a_unique_size_is_uploaded_without_hashing(tmp_path: Path, cache_path: Path) -> None:
    counter = Counting()
    files = {"x": old_file(tmp_path / "x", b"1"), "y": old_file(tmp_path / "y", b"22")}
    plan = plan_upload(scan_files(files), {}, etags(cache_path, counter))
    assert [f.key for f in plan.upload] == ["x", "y"] and counter.calls == []


def test_an_object_being_overwritten_is_not_a_copy_source(tmp_path: Path,
                                                          cache_path: Path) -> None:
    local = {"a": old_file(tmp_path / "a", b"new!"), "b": old_file(tmp_path / "b", b"old!")}
    remote = listing(a=b"old!")  # a changes; b holds what a held: upload, not copy from a
    plan = plan_upload(scan_files(local), remote, etags(cache_path, Counting()))
    assert [f.key for f in plan.upload] == ["a", "b"] and plan.copy == ()


def test_delete_prefix_and_folder_markers(tmp_path: Path, cache_path: Path) -> None:
    remote = listing(**{"p__gone": b"1", "p__folder__": b"", "q__other": b"2"})
    local = scan_files({"p/new": old_file(tmp_path / "n", b"n")})
    current = etags(cache_path, Counting())
    assert plan_upload(local, remote, current, delete_prefix="p/").delete == ("p/gone",)
    assert plan_upload(local, remote, current, delete_prefix="").delete == ("p/gone", "q/other")
    assert plan_upload(local, remote, current, delete_prefix=None).delete == ()


def test_remote_multipart_etags_of_other_part_sizes_match(tmp_path: Path,
                                                          cache_path: Path) -> None:
    data = os.urandom(3000)
    path = old_file(tmp_path / "f", data)
    parts = [data[i:i + 1024] for i in range(0, 3000, 1024)]
    other_tool = md5(b"".join(hashlib.md5(p).digest() for p in parts)) + "-3"
    plan = plan_upload(scan_files({"f": path}), {"f": ObjectInfo("f", other_tool, 3000)},
                       etags(cache_path, Counting()))
    assert plan.unchanged == ("f",)


# ----------------------------------------------------------------------------- Windows keys
def test_windows_separators_become_posix_keys(tmp_path: Path) -> None:
    path = old_file(tmp_path / "a.txt", b"a")
    assert list(scan_files({"sub\\dir\\a.txt": path})) == ["sub/dir/a.txt"]
    assert list(scan_files({"a.txt": path}, prefix="\\out\\")) == ["out/a.txt"]
    assert normalize_key(PureWindowsPath("results", "frame 1.png")) == "results/frame 1.png"
    old_file(tmp_path / "tree" / "d1" / "d2" / "f.bin", b"f")
    assert list(scan_directory(tmp_path / "tree", "in")) == ["in/d1/d2/f.bin"]
    with pytest.raises(ValueError):
        scan_files({"dir\\": path})


def test_safe_target_refuses_escapes_and_drives(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert safe_target(tmp_path, "a/b.txt") == os.path.join(tmp_path, "a", "b.txt")
    assert safe_target(tmp_path, "a\\b.txt") == os.path.join(tmp_path, "a", "b.txt")
    for bad in ("../x", "a/../../x", "a\\..\\..\\x", "/"):
        assert safe_target(tmp_path, bad) is None, bad
    monkeypatch.setattr("qcompute._sync._WINDOWS", True)
    assert safe_target(tmp_path, "C:\\x") is None and safe_target(tmp_path, "a:b") is None
    monkeypatch.setattr("qcompute._sync._WINDOWS", False)
    assert safe_target(tmp_path, "frame:001.png") == os.path.join(tmp_path, "frame:001.png")


# ----------------------------------------------------------------------------- downloads
def test_download_plan_skips_identical_files(tmp_path: Path, cache_path: Path) -> None:
    out = tmp_path / "out"
    old_file(out / "same.txt", b"same")
    old_file(out / "changed.txt", b"OLD!")  # same size, other content
    old_file(out / "grown.txt", b"short")
    objects = list(listing(**{"same.txt": b"same", "changed.txt": b"new!", "grown.txt": b"longer",
                              "missing.txt": b"m", "dup1": b"twin", "dup2": b"twin",
                              "twin-of-same": b"same", "dir__": b"", "..__escape": b"x"}).values())
    counter = Counting()
    plan = plan_download(objects, out, etags(cache_path, counter))
    assert [f.obj.key for f in plan.skip] == ["same.txt"]
    assert sorted(f.obj.key for f in plan.download) == ["changed.txt", "dup1", "grown.txt",
                                                         "missing.txt"]
    assert {(f.obj.key, os.path.basename(f.source or "")) for f in plan.local_copy} == {
        ("dup2", "dup1"), ("twin-of-same", "same.txt")}
    assert plan.folders == (str(out / "dir"),) and plan.refused == ("../escape",)
    assert sorted(name for name, _ in counter.calls) == ["changed.txt", "same.txt"]  # not grown


def test_download_plan_strips_the_remote_prefix(tmp_path: Path, cache_path: Path) -> None:
    objects = list(listing(**{"run__a.txt": b"a", "run__sub__b.txt": b"b"}).values())
    plan = plan_download(objects, tmp_path, etags(cache_path, Counting()), strip="run/")
    assert sorted(f.target for f in plan.download) == [str(tmp_path / "a.txt"),
                                                      str(tmp_path / "sub" / "b.txt")]


def test_get_all_files_twice_downloads_nothing_the_second_time(
        conn: Connection, storage: FakeStorage, tmp_path: Path, cache_path: Path) -> None:
    bucket = Bucket(conn, "data")
    storage.buckets["data"].update({"a": b"alpha", "b/c": b"charlie", "d": b"alpha"})
    bucket.get_all_files(tmp_path / "out")
    assert sorted(c[2] for c in storage.ops("get_to_file")) == ["a", "b/c"]  # d: a local copy
    assert (tmp_path / "out" / "d").read_bytes() == b"alpha"
    storage.calls.clear()
    paths = bucket.get_all_files(tmp_path / "out")
    assert storage.ops("get_to_file", "download_file") == []
    assert sorted(Path(p).name for p in paths) == ["a", "c", "d"]


# ----------------------------------------------------------------------------- running plans
def test_an_interrupted_sync_resumes_where_it_stopped(conn: Connection, storage: FakeStorage,
                                                      tmp_path: Path, cache_path: Path) -> None:
    bucket = Bucket(conn, "data")
    for i in range(40):
        old_file(tmp_path / "src" / f"f{i:02d}", b"%06d" % i)
    put = storage.put_file

    def slow_put(*args: Any, **kwargs: Any) -> str:
        time.sleep(0.01)
        return put(*args, **kwargs)

    storage.put_file = slow_put  # type: ignore[method-assign]
    done: list[str] = []

    def stop_after_ten(read: int, total: int, name: str) -> None:
        done.append(name)
        if len(done) >= 10:
            raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt):
        bucket.sync_directory(tmp_path / "src", progress=stop_after_ten)
    present = set(storage.buckets["data"])
    assert 10 <= len(present) < 40
    storage.calls.clear()
    moved: list[str] = []
    bucket.sync_directory(tmp_path / "src", progress=lambda r, t, name: moved.append(name))
    assert set(moved).isdisjoint(present)
    assert set(moved) | present == {f"f{i:02d}" for i in range(40)}


def test_a_changed_copy_source_falls_back_to_an_upload(conn: Connection, storage: FakeStorage,
                                                       tmp_path: Path, cache_path: Path) -> None:
    storage.buckets["data"] = {"old": b"zulu"}
    local = scan_files({"new": old_file(tmp_path / "new", b"zulu")})
    remote = listing(old=b"zulu")
    current = Etags(EtagCache(cache_path))
    plan = plan_upload(local, remote, current)
    assert [c.source for c in plan.copy] == ["old"]
    storage.buckets["data"]["old"] = b"ZULU"  # changed after the listing
    run_upload(storage, "data", plan, current)  # type: ignore[arg-type]
    assert storage.buckets["data"]["new"] == b"zulu"
    assert storage.ops("put_file") == [("put_file", "data", "new")]


def test_a_failing_copy_is_raised(conn: Connection, storage: FakeStorage, tmp_path: Path,
                                  cache_path: Path) -> None:
    storage.buckets["data"] = {}
    local = scan_files({"new": old_file(tmp_path / "new", b"zulu")})
    plan = plan_upload(local, listing(old=b"zulu"), Etags(None))
    with pytest.raises(StorageError, match="no object 'old'"):  # the source vanished
        run_upload(storage, "data", plan, Etags(None))  # type: ignore[arg-type]


def test_progress_true_draws_bytes_and_files_bars(conn: Connection, storage: FakeStorage,
                                                  tmp_path: Path, cache_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b", "c"):
        old_file(tmp_path / "src" / name, name.encode() * 3)
    Bucket(conn, "data").sync_directory(tmp_path / "src", progress=True)
    err = capsys.readouterr().err
    assert "9.00/9.00" in err and "3/3" in err and "file/s" in err


def test_the_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    from qcompute._etags import default_cache_path

    monkeypatch.setenv("QCOMPUTE_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "etags.sqlite3"
    monkeypatch.setenv("QCOMPUTE_CACHE_DIR", "")
    assert default_cache_path() is None
    monkeypatch.delenv("QCOMPUTE_CACHE_DIR")
    assert default_cache_path().name == "etags.sqlite3"  # type: ignore[union-attr]


def test_local_file_identity(tmp_path: Path) -> None:
    path = old_file(tmp_path / "f", b"abc")
    f: Any = scan_files({"k": path})["k"]
    assert isinstance(f, LocalFile)
    assert (f.key, f.size, f.abspath) == ("k", 3, os.path.abspath(path))
    assert f.mtime_ns == os.stat(path).st_mtime_ns


def test_into_an_empty_folder_the_smallest_file_goes_first_alone(
        conn: Connection, storage: FakeStorage, tmp_path: Path, cache_path: Path) -> None:
    for name, size in (("big", 30), ("small", 1), ("mid", 9)):
        old_file(tmp_path / "src" / name, b"x" * size)
    bucket = Bucket(conn, "data")
    bucket.sync_directory(tmp_path / "src")
    assert storage.ops("put_file")[0] == ("put_file", "data", "small")
