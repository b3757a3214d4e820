"""The task state is one pure function of the instance states: tested exhaustively."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest

from qcompute.server.services.lifecycle import derive_task_state, format_ranges, parse_ranges
from qcompute.states import InstanceState as I
from qcompute.states import TaskState as T


def derive(*states: I, abort: bool = False) -> T:
    return derive_task_state(Counter(states), abort_requested=abort)


@pytest.mark.parametrize("states, expected", [
    ((I.QUEUED, I.QUEUED), T.SUBMITTED),
    ((I.DISPATCHED, I.QUEUED), T.PARTIALLY_DISPATCHED),
    ((I.DISPATCHED, I.DOWNLOADING), T.FULLY_DISPATCHED),
    ((I.RUNNING, I.QUEUED), T.PARTIALLY_EXECUTING),
    ((I.RUNNING, I.DISPATCHED), T.PARTIALLY_EXECUTING),
    ((I.RUNNING, I.RUNNING), T.FULLY_EXECUTING),
    ((I.SUCCEEDED, I.QUEUED), T.PARTIALLY_EXECUTING),
    ((I.SUCCEEDED, I.RUNNING), T.FULLY_EXECUTING),
    ((I.UPLOADING, I.SUCCEEDED), T.UPLOADING_RESULTS),
    ((I.UPLOADING, I.RUNNING), T.FULLY_EXECUTING),
    ((I.SUCCEEDED, I.SUCCEEDED), T.SUCCESS),
    ((I.SUCCEEDED, I.FAILED), T.FAILURE),
    ((I.CANCELLED, I.SUCCEEDED), T.CANCELLED),
    ((I.CANCELLED, I.FAILED), T.FAILURE),
])
def test_examples(states, expected):
    assert derive(*states) is expected


def test_abort_is_pending_until_nothing_runs():
    assert derive(I.RUNNING, I.QUEUED, abort=True) is T.PENDING_CANCEL
    assert derive(I.CANCELLED, I.SUCCEEDED, abort=True) is T.CANCELLED


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_combination_is_consistent(n):
    """For every multiset of instance states: final iff all instances are final, and the
    derived state names a phase some instance is really in."""
    for combo in itertools.combinations_with_replacement(list(I), n):
        for abort in (False, True):
            state = derive(*combo, abort=abort)
            all_final = all(s.is_final() for s in combo)
            any_active = any(s.is_active() for s in combo)
            assert state.is_final() == (all_final or (abort and not any_active)), (combo, abort)
            if state is T.SUBMITTED:
                assert set(combo) == {I.QUEUED}
            if state is T.FAILURE:
                assert I.FAILED in combo
            if state in (T.FULLY_EXECUTING, T.FULLY_DISPATCHED, T.UPLOADING_RESULTS):
                assert I.QUEUED not in combo
            if state is T.PENDING_CANCEL:
                assert abort and any_active


def test_ranges_round_trip():
    assert parse_ranges("1,3-8,12-13", limit=100) == [1, 3, 4, 5, 6, 7, 8, 12, 13]
    assert format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert format_ranges([]) == ""


@pytest.mark.parametrize("text, message", [
    ("1,,2", "empty element"), ("a-3", "not a number"), ("5-2", "increasing"),
    ("0-1000", "more than 10 instances"),
])
def test_bad_ranges_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ranges(text, limit=10)
