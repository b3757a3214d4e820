"""The task's Qarnot state, derived from its instances by one pure function.

Instances carry the real states. Nothing else decides what a task's state is.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from qcompute.states import InstanceState as I
from qcompute.states import TaskState as T

__all__ = ["derive_task_state", "format_ranges", "parse_ranges"]


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


def parse_ranges(text: str, *, limit: int) -> list[int]:
    """Parse an advanced range such as ``"1,3-8,12-19"`` into sorted, distinct instance ids.

    Raises:
        ValueError: with a message naming the bad part, or when more than ``limit`` ids result.
    """
    ids: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"empty element in range {text!r}")
        low, sep, high = part.partition("-")
        try:
            start, end = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(f"{part!r} is not a number or a range like 3-8") from None
        if start < 0 or end < start:
            raise ValueError(f"{part!r} is not an increasing range of non-negative numbers")
        if len(ids) + (end - start + 1) > limit:
            raise ValueError(f"range {text!r} has more than {limit} instances")
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
