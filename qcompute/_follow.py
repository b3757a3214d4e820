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

__all__ = ["follow_lines", "STREAMS"]

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


def _lines(obj: Any, stream: str, instance: Optional[int]) -> Iterator[str]:
    http = obj._conn._http
    path = obj._url(stream) if instance is None else obj._url(stream, instance)
    missing = obj._not_found if instance is None else obj._instance_not_found
    hold = obj._conn._long_poll_seconds()
    offset, seen, pending = 0, 0, ""  # seen: characters of the whole stream (fallback)
    interval = _resource.POLL_START
    sliced = False  # the server ignored the offset: slice the whole stream here
    while True:
        complete = False
        if sliced:
            obj._fetch()  # the state first: if final, the read below holds all the output
            complete = _final(obj)
        params = {"offset": offset, "wait": f"{hold:g}"} if hold else {"offset": offset}
        text, headers = http.request("GET", path, params=params, hold=hold, expect_json=False,
                                     not_found=missing, with_headers=True)
        if "X-Output-Offset" in headers:
            offset = int(headers["X-Output-Offset"])
            complete = headers.get("X-Output-Complete") == "true"
        else:
            sliced, text, seen = True, text[seen:], max(seen, len(text))
        pending += text
        *lines, pending = pending.split("\n")
        yield from (line[:-1] if line.endswith("\r") else line for line in lines)
        if complete:
            break
        if not text and (sliced or not hold):  # no held read: space the polls
            _resource._sleep(interval)
            interval = min(interval * _resource.POLL_FACTOR, _resource.POLL_MAX)
        elif text:
            interval = _resource.POLL_START
    if pending:
        yield pending
