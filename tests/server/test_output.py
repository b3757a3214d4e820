"""Bounded output files: the oldest bytes go, logical offsets (read cursors) stay valid."""
from __future__ import annotations

from qcompute.server.services.output import TASK_LEVEL, OutputStore


def test_keeps_at_most_the_bound_and_cursors_survive_trimming(tmp_path):
    store = OutputStore(tmp_path, max_bytes=1024)
    lines = [f"line {n:04d}\n" for n in range(400)]  # 10 bytes each, 4000 in all
    cursor, fresh = 0, []
    for n, line in enumerate(lines):
        store.append("t", 0, "stdout", line)
        if n % 7 == 0:  # a fresh_stdout reader polling now and then
            text, cursor = store.read("t", 0, "stdout", since=cursor)
            fresh.append(text)
    text, end = store.read("t", 0, "stdout", since=cursor)
    fresh.append(text)
    whole, _ = store.read("t", 0, "stdout")
    assert end == 4000
    assert 1024 <= len(whole) <= 1536 and "".join(lines).endswith(whole)
    assert "".join(fresh) == "".join(lines)  # the reader kept up: nothing lost, nothing twice


def test_a_reader_left_behind_gets_what_is_kept(tmp_path):
    store = OutputStore(tmp_path, max_bytes=1024)
    for n in range(400):
        store.append("t", 3, "stderr", f"line {n:04d}\n")
    text, end = store.read("t", 3, "stderr", since=0)
    assert end == 4000 and text == store.read("t", 3, "stderr")[0]


def test_task_level_stream_interleaves_instances_and_delete_removes(tmp_path):
    store = OutputStore(tmp_path, max_bytes=1024)
    store.append("t", 0, "stdout", "a\n")
    store.append("t", 1, "stdout", "b\n")
    store.append("t", 0, "stdout", "c\n")
    assert store.read("t", TASK_LEVEL, "stdout")[0] == "a\nb\nc\n"
    assert store.read("t", 1, "stdout")[0] == "b\n"
    assert store.read("t", 0, "stderr") == ("", 0)
    store.delete("t")
    assert store.read("t", TASK_LEVEL, "stdout") == ("", 0)
