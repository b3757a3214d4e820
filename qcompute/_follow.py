"""``follow()``: the lines of a task's (or pool's) output as they are written, until it ends.

On a qcompute cluster each read is ``GET /<kind>/{uuid}/<stream>?offset=N&wait=S``: the server
answers the bytes from ``N`` as soon as there are some (or after ``S`` seconds), says where to
read next (``X-Output-Offset``) and whether the object was final before that read
(``X-Output-Complete``), so the last lines are never missed and no request is wasted.

A server without offsets (Qarnot's) answers the whole stream, without those headers: then the
object is refreshed first (``GET /<kind>/{uuid}``), the stream read, and only the part past what
was already seen kept; the reads are spaced 0.05 s apart, growing to 1 s. The ``POST`` "fresh"
reads are never used: their cursor is shared by every reader of the object.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from . import _resource

__all__ = ["follow_lines", "OutputCursor", "STREAMS"]

STREAMS = ("stdout", "stderr")


def _final(obj: Any) -> bool:
    state = obj._state_now()
    return bool(getattr(state, "is_final", lambda: False)())


def follow_lines(obj: Any, stream: str, instance: Optional[int]) -> Iterator[str]:
    """The iterator behind :meth:`~qcompute._resource.OutputMethods.follow` (its arguments
    checked now, not at the first line)."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be 'stdout' or 'stderr', got {stream!r}")
    obj._require_submitted(f"follow {stream}")
    return _interruptible(_lines(obj, stream, instance))


def _interruptible(lines: Iterator[str]) -> Iterator[str]:
    """Ctrl-C while waiting for a line: a fresh ``KeyboardInterrupt``, whose traceback shows
    the caller's loop, not the HTTP internals that were waiting."""
    try:
        yield from lines
        return
    except KeyboardInterrupt:
        pass
    raise KeyboardInterrupt from None


class OutputCursor:
    """Where one reader is in one output stream of a task or pool. :meth:`read` returns what
    was written since the previous read, and moves no other reader's cursor (unlike the
    ``POST`` "fresh" reads). ``complete`` turns true once a read holds the last of it."""

    def __init__(self, obj: Any, stream: str, instance: Optional[int] = None) -> None:
        self._obj = obj
        self._path = obj._url(stream) if instance is None else obj._url(stream, instance)
        self._missing = obj._not_found if instance is None else obj._instance_not_found
        self.offset = 0  # the server's offset (X-Output-Offset)
        self.sliced = False  # the server ignores offsets: whole reads, sliced here
        self._seen = 0  # characters of the whole stream already returned (sliced reads)
        self.complete = False

    def read(self, hold: float = 0.0) -> str:
        """The new text; ``hold``: seconds the server may wait for some (qcompute's server)."""
        complete = False
        if self.sliced:
            self._obj._fetch()  # the state first: if final, the read below holds all the output
            complete = _final(self._obj)
        params = {"offset": self.offset, "wait": f"{hold:g}"} if hold else {"offset": self.offset}
        text, headers = self._obj._conn._http.request(
            "GET", self._path, params=params, hold=hold, expect_json=False,
            not_found=self._missing, with_headers=True)
        if "X-Output-Offset" in headers:
            self.offset = int(headers["X-Output-Offset"])
            complete = headers.get("X-Output-Complete") == "true"
        else:
            self.sliced, text, self._seen = True, text[self._seen:], max(self._seen, len(text))
        self.complete = complete
        return text


def _lines(obj: Any, stream: str, instance: Optional[int]) -> Iterator[str]:
    cursor = OutputCursor(obj, stream, instance)
    hold = obj._conn._long_poll_seconds()
    pending = ""
    interval = _resource.POLL_START
    while True:
        text = cursor.read(hold)
        pending += text
        *lines, pending = pending.split("\n")
        yield from (line[:-1] if line.endswith("\r") else line for line in lines)
        if cursor.complete:
            break
        if not text and (cursor.sliced or not hold):  # no held read: space the polls
            _resource._sleep(interval)
            interval = min(interval * _resource.POLL_FACTOR, _resource.POLL_MAX)
        elif text:
            interval = _resource.POLL_START
    if pending:
        yield pending
