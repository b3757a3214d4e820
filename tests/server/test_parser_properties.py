"""Property tests (hypothesis) of the parsers that take user input: advanced ranges, time spans,
listing filters, ``${NAME}`` templating and the JSON depth check. Whatever the input, each
either answers or refuses with its own error (never another exception), and the round trips
hold. Example counts are bounded so the suite stays fast."""
from __future__ import annotations

import json
import shlex
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy.orm import Session

from qcompute.server.api.limits import MAX_JSON_DEPTH, check_json_depth
from qcompute.server.command import CommandError, expand, split_command
from qcompute.server.db import make_engine
from qcompute.server.db.models import Base, User
from qcompute.server.errors import BadRequest
from qcompute.server.schemas import PageRequest
from qcompute.server.schemas.common import (MAX_INSTANCE_ID, MAX_SPAN, format_timespan,
                                            parse_timespan)
from qcompute.server.services.lifecycle import format_ranges, parse_ranges
from qcompute.server.services.listing import page_jobs, page_pools, page_tasks

from .conftest import engine_url

FAST = settings(max_examples=300, deadline=None)
SLOW = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- advanced ranges ---------------------------------------------------------------------------

range_text = st.text(alphabet="0123456789-, \t٣x", max_size=60) | st.lists(
    st.tuples(st.integers(0, 2**40), st.integers(0, 50)), max_size=20).map(
    lambda parts: ",".join(f"{a}-{a + d}" if d else str(a) for a, d in parts))


@FAST
@given(range_text, st.integers(1, 5000))
def test_parse_ranges_answers_ids_in_bounds_or_a_value_error(text, limit):
    try:
        ids = parse_ranges(text, limit=limit)
    except ValueError as exc:
        event("refused")
        assert str(exc)
        return
    event("parsed")
    assert ids == sorted(set(ids)) and 0 < len(ids) <= limit
    assert 0 <= ids[0] and ids[-1] <= MAX_INSTANCE_ID


@FAST
@given(st.sets(st.integers(0, MAX_INSTANCE_ID), min_size=1, max_size=200)
       | st.sets(st.integers(0, 300), min_size=1, max_size=300))
def test_format_then_parse_ranges_gives_the_ids_back(ids):
    assert parse_ranges(format_ranges(ids), limit=len(ids)) == sorted(ids)


@FAST
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 30)), min_size=1, max_size=30))
def test_parse_ranges_reads_each_part(parts):
    text = ",".join(f"{a}-{a + d}" if d else str(a) for a, d in parts)
    expected = sorted({i for a, d in parts for i in range(a, a + d + 1)})
    assert parse_ranges(text, limit=10**6) == expected


# -- time spans --------------------------------------------------------------------------------

span_text = st.text(alphabet="0123456789.: -٣", max_size=40) | st.builds(
    lambda d, h, m, s, f: (f"{d}." if d is not None else "") + f"{h:02d}:{m:02d}:{s:02d}"
    + (f".{f}" if f is not None else ""),
    st.none() | st.integers(0, 10**30), st.integers(0, 99), st.integers(0, 99),
    st.integers(0, 99), st.none() | st.integers(0, 9_999_999))


@FAST
@given(span_text)
def test_parse_timespan_answers_a_span_in_bounds_or_a_value_error(text):
    try:
        span = parse_timespan(text)
    except ValueError as exc:
        event("refused")
        assert str(exc)
        return
    event("parsed")
    assert timedelta(0) <= span <= MAX_SPAN


@FAST
@given(st.timedeltas(min_value=timedelta(0), max_value=MAX_SPAN))
def test_format_then_parse_timespan_gives_the_span_back(span):
    assert parse_timespan(format_timespan(span)) == span


# -- listing filters ---------------------------------------------------------------------------

fields = st.sampled_from(["Name", "name", "Tags", "State", "Uuid", "Profile", "CreationDate",
                          "Shortname", "Nope", ""]) | st.text(max_size=8)
operators = st.sampled_from(["Equal", "NotEqual", "LessThan", "LessThanOrEqual", "GreaterThan",
                             "GreaterThanOrEqual", "In", "NotIn", "Like", "And", "Or", "Xor"])
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=20) | st.sampled_from(["2024-01-31T12:00:00Z", "%a_", "Success"]))
leaves = st.fixed_dictionaries(
    {"operator": operators}, optional={"field": fields | scalars,
                                       "value": scalars | st.lists(scalars, max_size=5)})
texts = st.text(max_size=20) | st.sampled_from(["Success", "%", "_", "a%b", "\x00"])
meaningful = st.one_of(  # leaves the compiler accepts: a known field, a value of its type
    st.builds(lambda f, o, v: {"operator": o, "field": f, "value": v},
              st.sampled_from(["Name", "SHORTNAME", "State", "Uuid", "Profile", "Tags"]),
              st.sampled_from(["Equal", "NotEqual"]), texts),
    st.builds(lambda f, o, v: {"operator": o, "field": f, "value": v},
              st.sampled_from(["Name", "State", "tags"]), st.sampled_from(["In", "NotIn"]),
              st.lists(texts, max_size=5)),
    st.builds(lambda v: {"operator": "Like", "field": "Name", "value": v}, texts),
    st.builds(lambda o, d: {"operator": o, "field": "CreationDate", "value": d.isoformat()},
              st.sampled_from(["LessThan", "GreaterThanOrEqual", "Equal"]), st.datetimes()))
meaningful_trees = st.recursive(
    meaningful, lambda children: st.builds(
        lambda o, c: {"operator": o, "filters": c}, st.sampled_from(["And", "Or"]),
        st.lists(children, min_size=1, max_size=6)), max_leaves=60)
filters = meaningful_trees | st.recursive(
    leaves | scalars,
    lambda children: st.fixed_dictionaries(
        {"operator": st.sampled_from(["And", "Or"]) | operators},
        optional={"filters": st.lists(children, max_size=6) | scalars}),
    max_leaves=40)


@pytest.fixture(scope="module")
def database(module_database_url, tmp_path_factory):
    engine = make_engine(engine_url(module_database_url, tmp_path_factory.mktemp("pages")))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        user = User(email="a@example.com", token_hash="0" * 64)
        session.add(user)
        session.commit()
    yield engine
    engine.dispose()


@SLOW
@given(filter_=filters, token=st.none() | st.text(max_size=25) | st.integers(0, 2**64).map(str),
       size=st.none() | st.integers(-5, 2000))
def test_any_page_request_runs_or_is_a_400(database, filter_, token, size):
    try:
        request = PageRequest.model_validate({"filter": filter_, "token": token,
                                              "maximumResults": size})
    except ValidationError:
        event("refused by PageRequest")
        return  # a 400 naming the field
    with Session(database) as session:
        user = session.query(User).one()
        for pager in (page_tasks, page_pools, page_jobs):
            try:
                rows, _ = pager(session, user, request)
            except BadRequest as exc:
                event("refused by the filter compiler")
                assert exc.code == "invalid_filter" and exc.message
            else:
                event("ran")
                assert rows == []


# -- ${NAME} templating ------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@FAST
@given(st.text(max_size=80), st.dictionaries(names, st.text(max_size=20), max_size=5))
def test_expand_and_split_never_fail_unexpectedly(command, variables):
    expanded = expand(command, variables)
    assert isinstance(expanded, str)
    try:
        words = split_command(command, variables)
    except CommandError as exc:
        assert "cannot be split" in str(exc)
    else:
        assert all(isinstance(w, str) for w in words)


@FAST
@given(st.lists(st.text(min_size=0, max_size=20).filter(lambda w: "${" not in w), max_size=8))
def test_split_gives_back_the_words_of_a_quoted_command(words):
    assert split_command(shlex.join(words), {}) == words


@FAST
@given(names, st.text(max_size=30), names, st.text(max_size=30))
def test_expansion_is_one_pass_and_leaves_unknown_names(name, value, other, other_value):
    assume(name != other)
    variables = {name: "${" + other + "}", other: other_value}
    assert expand("${" + name + "}", variables) == "${" + other + "}"  # not expanded again
    unknown = name + "_UNKNOWN"
    assert expand("a ${" + unknown + "} $" + name, {name: value}) == (
        "a ${" + unknown + "} $" + name)


# -- JSON depth --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\ é', max_size=6),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet='k[]{}"\\', max_size=3), children, max_size=3),
    max_leaves=20)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@FAST
@given(json_values, st.integers(0, MAX_JSON_DEPTH + 5), st.booleans())
def test_json_depth_check_is_exact(value, wrap, ascii_only):
    for _ in range(wrap):
        value = [value] if wrap % 2 else {"w": value}
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    try:
        check_json_depth(body)
    except BadRequest as exc:
        event("too deep")
        assert exc.code == "json_too_deep"
        assert depth(value) > MAX_JSON_DEPTH
    else:
        assert depth(value) <= MAX_JSON_DEPTH
