"""The task's Qarnot state, derived from its instances by one pure function.

Instances carry the real states. Nothing else decides what a task's state is.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

from qcompute.states import InstanceState as I
from qcompute.states import TaskState as T

from ..schemas.common import MAX_INSTANCE_ID, shown

__all__ = ["derive_task_state", "failure_class", "FAILURE_CLASSES", "format_ranges",
           "parse_ranges", "MAX_RANGE_PARTS"]

_PART = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)


def derive_task_state(counts: Mapping[I, int], *, abort_requested: bool = False) -> T:
    """The task state for its instances, given as a count per instance state.

    * aborted: PendingCancel while an instance still runs, then Cancelled;
    * all instances final: Failure if one failed, else Cancelled if one was cancelled, else
      Success;
    * otherwise the furthest phase reached: Submitted → (Partially|Fully)Dispatched →
      (Partially|Fully)Executing → UploadingResults. "Fully" means no instance waits behind.
    """
    total = sum(counts.values())
    active = sum(n for state, n in counts.items() if state.is_active())
    final = sum(n for state, n in counts.items() if state.is_final())
    if abort_requested:
        return T.PENDING_CANCEL if active else T.CANCELLED
    if total == 0 or final == total:
        if counts.get(I.FAILED):
            return T.FAILURE
        return T.CANCELLED if counts.get(I.CANCELLED) else T.SUCCESS
    queued = counts.get(I.QUEUED, 0)
    dispatched = counts.get(I.DISPATCHED, 0) + counts.get(I.DOWNLOADING, 0)
    executing = counts.get(I.RUNNING, 0)
    uploading = counts.get(I.UPLOADING, 0)
    if executing or uploading or final:
        if uploading and not (queued or dispatched or executing):
            return T.UPLOADING_RESULTS
        return T.FULLY_EXECUTING if not (queued or dispatched) else T.PARTIALLY_EXECUTING
    if dispatched:
        return T.FULLY_DISPATCHED if not queued else T.PARTIALLY_DISPATCHED
    return T.SUBMITTED


FAILURE_CLASSES = ("cancelled", "infrastructure", "application", "results")


def failure_class(state: I, exit_code: Optional[int]) -> Optional[str]:
    """Why an attempt ended as it did, from what its instance row keeps: ``state`` is the state
    the end led to (Queued when it is run again) and ``exit_code`` the command's.

    None: it succeeded. ``cancelled``: it was stopped. ``infrastructure``: no exit code (the
    command never ran, or its runner or node was lost), or an exit code of 0 and run again
    (the node failed after the command). ``application``: the command exited non-zero.
    ``results``: the command exited 0 but its results could not be stored.
    """
    if state == I.SUCCEEDED:
        return None
    if state == I.CANCELLED:
        return "cancelled"
    if exit_code is None or (exit_code == 0 and state != I.FAILED):
        return "infrastructure"
    return "application" if exit_code != 0 else "results"


MAX_RANGE_PARTS = 10_000  # comma-separated parts of one advanced range


def parse_ranges(text: str, *, limit: int) -> list[int]:
    """Parse an advanced range such as ``"1,3-8,12-19"`` into sorted, distinct instance ids.

    Ids go from 0 to :data:`MAX_INSTANCE_ID`; at most :data:`MAX_RANGE_PARTS` parts.

    Raises:
        ValueError: with a message naming the bad part, or when more than ``limit`` ids result.
    """
    parts = text.split(",")
    if len(parts) > MAX_RANGE_PARTS:
        raise ValueError(f"{len(parts)} parts: a range has at most {MAX_RANGE_PARTS}")
    ids: set[int] = set()
    for part in (p.strip() for p in parts):
        if not part:
            raise ValueError(f"empty element in range {shown(text)}")
        match = _PART.fullmatch(part)
        if not match:
            raise ValueError(f"{shown(part)} is not a number or a range like 3-8")
        if any(len(n.lstrip("0")) > 10 for n in match.groups() if n):  # int() of huge text is slow
            raise ValueError(f"{shown(part)}: instance ids go up to {MAX_INSTANCE_ID}")
        start, end = int(match[1]), int(match[2] or match[1])
        if end < start:
            raise ValueError(f"{shown(part)} is not an increasing range")
        if end > MAX_INSTANCE_ID:
            raise ValueError(f"{shown(part)}: instance ids go up to {MAX_INSTANCE_ID}")
        if len(ids) + (end - start + 1) > limit:
            raise ValueError(f"range {shown(text)} has more than {limit} instances")
        ids.update(range(start, end + 1))
    return sorted(ids)


def format_ranges(ids: Iterable[int]) -> str:
    """The inverse of :func:`parse_ranges`: ``[0, 1, 2, 5]`` → ``"0-2,5"``."""
    parts: list[str] = []
    run: list[int] = []
    for value in sorted(set(ids)):
        if run and value == run[-1] + 1:
            run.append(value)
            continue
        if run:
            parts.append(_span(run))
        run = [value]
    if run:
        parts.append(_span(run))
    return ",".join(parts)


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
