"""Bucket logic on an in-memory storage: keys, uploads, sync, downloads, progress, task views."""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest

from qcompute import Bucket, Connection

from .helpers import FakeStorage, write


@pytest.fixture
def bucket(conn: Connection, storage: FakeStorage) -> Bucket:
    return Bucket(conn, "data")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "case"
    write(root / "a.txt", b"alpha")
    write(root / "sub" / "b.txt", b"bravo")
    write(root / "sub" / "deep" / "c.bin", b"\x00\x01\x02")
    return root


def test_constructor_creates_only_when_asked(conn: Connection, storage: FakeStorage) -> None:
    Bucket(conn, "made")
    Bucket(conn, "not-made", create=False)
    assert storage.ops("create_bucket") == [("create_bucket", "made")]
    with pytest.raises(ValueError):
        Bucket(conn, "  ", create=False)


def test_add_file_string_fileobj_and_setitem(bucket: Bucket, storage: FakeStorage,
                                             tree: Path) -> None:
    assert bucket.add_file(str(tree / "a.txt")) == "a.txt"
    assert bucket.add_file(tree / "a.txt", "in/") == "in/a.txt"
    assert bucket.add_file(tree / "a.txt", "//in\\renamed.txt") == "in/renamed.txt"
    assert bucket.add_string("hi", "/notes//n.txt") == "notes/n.txt"
    assert bucket.add_file(io.BytesIO(b"stream"), "s.bin") == "s.bin"
    bucket["one/x.txt"] = str(tree / "sub" / "b.txt")
    bucket["copy"] = str(tree / "sub")
    assert storage.buckets["data"] == {
        "a.txt": b"alpha", "in/a.txt": b"alpha", "in/renamed.txt": b"alpha",
        "notes/n.txt": b"hi", "s.bin": b"stream", "one/x.txt": b"bravo",
        "copy/b.txt": b"bravo", "copy/deep/c.bin": b"\x00\x01\x02"}
    with pytest.raises(FileNotFoundError):
        bucket.add_file(tree / "missing")
    with pytest.raises(ValueError):
        bucket.add_file(io.BytesIO(b""))


def test_sync_directory_uploads_only_what_changed(bucket: Bucket, storage: FakeStorage,
                                                  tree: Path) -> None:
    bucket.sync_directory(tree)
    assert storage.buckets["data"] == {"a.txt": b"alpha", "sub/b.txt": b"bravo",
                                       "sub/deep/c.bin": b"\x00\x01\x02"}
    storage.calls.clear()
    bucket.sync_directory(tree)  # nothing changed: one listing, no transfer
    assert storage.calls == [("list_objects", "data", "")]
    (tree / "a.txt").write_bytes(b"ALPHA")  # same size, new content
    (tree / "sub" / "b.txt").unlink()
    storage.calls.clear()
    bucket.sync_directory(tree)
    assert storage.ops("upload_file", "put_file") == [("put_file", "data", "a.txt")]
    assert storage.ops("delete_objects") == [("delete_objects", "data", ("sub/b.txt",))]
    assert storage.buckets["data"]["a.txt"] == b"ALPHA"


def test_sync_directory_with_remote_prefix_keeps_other_keys(bucket: Bucket, storage: FakeStorage,
                                                            tree: Path) -> None:
    storage.buckets["data"].update({"other/keep": b"k", "case/stale": b"s", "cases": b"c",
                                    "case/folder/": b""})
    bucket.sync_directory(tree, remote="case")
    assert storage.buckets["data"] == {
        "other/keep": b"k", "cases": b"c", "case/folder/": b"", "case/a.txt": b"alpha",
        "case/sub/b.txt": b"bravo", "case/sub/deep/c.bin": b"\x00\x01\x02"}
    assert ("list_objects", "data", "case/") in storage.calls


def test_sync_files_mirror_and_bad_input(bucket: Bucket, storage: FakeStorage, tree: Path) -> None:
    storage.buckets["data"]["old"] = b"o"
    bucket.sync_files({"x/a": tree / "a.txt"})
    assert storage.buckets["data"] == {"x/a": b"alpha"}
    with pytest.raises(FileNotFoundError):
        bucket.sync_files({"x": tree / "nope"})
    with pytest.raises(ValueError):
        bucket.sync_files({"dir/": tree / "a.txt"})
    with pytest.raises(NotADirectoryError):
        bucket.sync_directory(tree / "a.txt")


def test_sync_verbose_logs_each_transfer(bucket: Bucket, storage: FakeStorage, tree: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    storage.buckets["data"]["stale"] = b"s"
    with caplog.at_level(logging.INFO, logger="qcompute.bucket"):
        bucket.sync_directory(tree, verbose=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("upload" in m and "sub/b.txt" in m for m in messages)
    assert any(m == "delete data/stale" for m in messages)


def test_get_all_files_and_get_file(bucket: Bucket, storage: FakeStorage, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    storage.buckets["data"].update({"r/one.txt": b"1", "two.txt": b"22", "empty/": b"",
                                    "../escape": b"x"})
    out = tmp_path / "out"
    written = bucket.get_all_files(out)
    assert sorted(Path(p).relative_to(out).as_posix() for p in written) == ["r/one.txt", "two.txt"]
    assert (out / "r" / "one.txt").read_bytes() == b"1" and (out / "empty").is_dir()
    assert not (tmp_path / "escape").exists()
    assert "../escape" in caplog.text
    target = bucket.get_file("r/one.txt", tmp_path / "single")
    assert Path(target).read_bytes() == b"1"
    (tmp_path / "dir").mkdir()
    assert bucket.get_file("two.txt", tmp_path / "dir") == str(tmp_path / "dir" / "two.txt")


def test_progress_callable_gets_cumulative_bytes(bucket: Bucket, storage: FakeStorage,
                                                 tree: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    bucket.sync_directory(tree, progress=lambda read, total, name: seen.append((read, total, name)))
    assert seen[-1][:2] == (13, 13)  # 5 + 5 + 3 bytes
    assert {name for _, _, name in seen} == {"a.txt", "sub/b.txt", "sub/deep/c.bin"}
    assert [read for read, _, _ in seen] == sorted(read for read, _, _ in seen)
    seen.clear()
    bucket.get_file("a.txt", tmp_path / "a", progress=lambda *args: seen.append(args))
    assert seen == [(4, 5, "a.txt"), (5, 5, "a.txt")]


def test_progress_true_draws_a_tqdm_bar(bucket: Bucket, storage: FakeStorage, tree: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bucket.add_directory(tree, progress=True)
    assert "upload to data" in capsys.readouterr().err


def test_listing_delete_file_and_delete(bucket: Bucket, storage: FakeStorage) -> None:
    storage.buckets["data"].update({"a/1": b"1", "a/2": b"2", "b/3": b"3"})
    assert bucket.list_files() == ["a/1", "a/2", "b/3"]
    assert [(o.key, o.size) for o in bucket.directory("a/")] == [("a/1", 1), ("a/2", 1)]
    bucket.delete_file("/a//1")
    assert "a/1" not in storage.buckets["data"]
    bucket.delete()
    assert "data" not in storage.buckets
    assert storage.calls[-2:] == [("delete_objects", "data", ("a/2", "b/3")),
                                  ("delete_bucket", "data")]


def test_task_views_make_no_request(conn: Connection, storage: FakeStorage) -> None:
    base = Bucket(conn, "in", create=False)
    view = base.with_filtering("//data/").with_resource_transformation("data/").with_cache_ttl(60)
    assert base.to_resource_json() == {"bucketName": "in", "cacheTTLSec": None}
    assert view.to_resource_json() == {
        "bucketName": "in", "filtering": {"prefixFiltering": {"prefix": "data/"}},
        "resourcesTransformation": {"stripPrefix": {"prefix": "data/"}}, "cacheTTLSec": 60}
    assert Bucket.from_resource_json(conn, view.to_resource_json()) == view
    assert view != base and view.name == base.name
    assert repr(view) == "<Bucket 'in' filter='data/' strip='data/'>"
    assert storage.calls == []


def test_large_sync_runs_uploads_in_parallel(bucket: Bucket, storage: FakeStorage,
                                             tmp_path: Path, monkeypatch: Any) -> None:
    import threading

    threads: set[int] = set()
    upload = storage.put_file

    def record(*args: Any, **kwargs: Any) -> str:
        threads.add(threading.get_ident())
        threading.Event().wait(0.01)
        return upload(*args, **kwargs)

    monkeypatch.setattr(storage, "put_file", record)
    for i in range(20):
        write(tmp_path / "many" / f"f{i}", str(i).encode())
    bucket.sync_directory(tmp_path / "many")
    assert len(storage.buckets["data"]) == 20
    assert len(threads) > 1
