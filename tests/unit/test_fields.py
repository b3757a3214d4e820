"""Field descriptors and the Resource base: read-only rules, TTL refresh, dirty tracking, commit."""
from __future__ import annotations

import pydoc
import re
from datetime import datetime, timezone
from typing import Any

import pytest
import responses

import qcompute
from qcompute import Connection, FieldError, ReadOnlyFieldError, ResourceStateError
from qcompute._fields import Field, dump_datetime, parse_datetime
from qcompute._resource import Resource

from .conftest import FakeClock
from .helpers import API, body


def _list(owner: Any, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise FieldError("tags must be a list")
    return value


class Thing(Resource):
    __slots__ = ()
    _path = "things"
    _repr_fields = ("uuid", "name", "state")

    name = Field("name")
    kind = Field("kind", fixed_after_submit=True)
    tags = Field("tags", default=list, validate=_list)
    labels = Field("labels", default=dict)
    state = Field("state", volatile=True, default="Unknown")
    created = Field("created", read_only=True, parse=parse_datetime)


DOC = {"uuid": "t1", "name": "one", "kind": "k", "tags": ["a"], "labels": {"x": "1"},
       "state": "Running", "created": "2026-11-21T10:00:00Z", "extra": {"kept": True}}
URL = f"{API}/things/t1"


@pytest.fixture
def thing(conn: Connection) -> Thing:
    return Thing._from_json(conn, dict(DOC))


def test_read_only_field_cannot_be_set_and_names_itself(thing: Thing) -> None:
    with pytest.raises(ReadOnlyFieldError, match="Thing.created is read-only") as caught:
        thing.created = datetime.now()
    assert isinstance(caught.value, AttributeError)
    with pytest.raises(ReadOnlyFieldError, match="Thing.state"):
        thing.state = "Done"  # volatile fields are server-owned
    with pytest.raises(ReadOnlyFieldError, match="Thing.uuid"):
        thing.uuid = "other"


def test_fixed_after_submit_is_writable_before_only(conn: Connection, thing: Thing) -> None:
    fresh = Thing(conn)
    fresh.kind = "before"
    assert fresh.kind == "before"
    with pytest.raises(ReadOnlyFieldError, match="Thing.kind cannot change once the thing is submitted"):
        thing.kind = "after"
    assert thing.kind == "k"


def test_validation_runs_on_assignment(thing: Thing) -> None:
    with pytest.raises(FieldError, match="tags must be a list"):
        thing.tags = "a,b"


def test_unknown_attributes_are_refused(thing: Thing) -> None:
    with pytest.raises(AttributeError):
        thing.snapshots_whitelist = "typo"  # type: ignore[attr-defined]


def test_volatile_read_refreshes_only_when_stale(api: responses.RequestsMock, thing: Thing,
                                                 clock: FakeClock) -> None:
    assert thing.state == "Running"  # just loaded: no request
    clock.now += 4.9
    assert thing.state == "Running"
    assert thing.name == "one"  # not volatile: never refreshes
    assert len(api.calls) == 0
    clock.now += 0.2
    api.add("GET", URL, json={**DOC, "state": "Done"})
    assert thing.state == "Done"
    assert len(api.calls) == 1
    assert thing.fetched_at == clock.now


def test_auto_update_off_and_zero_cache_time(api: responses.RequestsMock, thing: Thing,
                                             clock: FakeClock) -> None:
    thing.auto_update = False
    clock.now += 60
    assert thing.state == "Running"
    assert len(api.calls) == 0
    thing.auto_update = True
    thing.update_cache_time = 0
    api.add("GET", URL, json={**DOC, "state": "A"})
    api.add("GET", URL, json={**DOC, "state": "B"})
    assert thing.state == "A"
    assert thing.state == "B"
    assert len(api.calls) == 2


def test_update_flushcache_and_never_submitted(api: responses.RequestsMock, conn: Connection,
                                               thing: Thing) -> None:
    assert Thing(conn).update(flushcache=True) is False
    assert Thing(conn).state == "Unknown"
    assert thing.update() is False
    api.add("GET", URL, json=DOC)
    assert thing.update(flushcache=True) is True
    assert len(api.calls) == 1


def test_refresh_keeps_local_edits(api: responses.RequestsMock, thing: Thing,
                                   clock: FakeClock) -> None:
    thing.name = "mine"
    thing.labels["y"] = "2"  # in-place edit
    clock.now += 10
    api.add("GET", URL, json={**DOC, "name": "theirs", "labels": {"z": "3"}, "state": "Done"})
    assert thing.state == "Done"
    assert thing.name == "mine"
    assert thing.labels == {"x": "1", "y": "2"}
    assert thing.tags == ["a"]
    api.add("PUT", URL)
    thing.commit()
    sent = body(api.calls[1])
    assert sent["name"] == "mine" and sent["labels"] == {"x": "1", "y": "2"}
    assert sent["state"] == "Done"  # the rest is the last server document


def test_commit_sends_whole_document_with_in_place_changes(api: responses.RequestsMock,
                                                           thing: Thing) -> None:
    thing.labels["new"] = "v"
    thing.tags.append("b")
    api.add("PUT", URL)
    assert thing.commit() is thing
    assert api.calls[0].request.method == "PUT"
    assert body(api.calls[0]) == {**DOC, "labels": {"x": "1", "new": "v"}, "tags": ["a", "b"]}
    assert "Idempotency-Key" not in api.calls[0].request.headers
    thing.commit()  # nothing changed since: no request
    assert len(api.calls) == 1


def test_commit_without_changes_sends_nothing(api: responses.RequestsMock, thing: Thing) -> None:
    assert thing.labels == {"x": "1"}
    assert thing.tags == ["a"]
    thing.commit()
    assert len(api.calls) == 0


def test_assignment_then_commit(api: responses.RequestsMock, thing: Thing) -> None:
    thing.tags = ["c"]
    api.add("PUT", URL)
    thing.commit()
    assert body(api.calls[0])["tags"] == ["c"]


def test_in_place_change_of_a_fixed_field_is_refused_at_commit(conn: Connection) -> None:
    thing = Thing._from_json(conn, {**DOC, "kind": ["k"]})
    thing.kind.append("more")
    with pytest.raises(ReadOnlyFieldError, match="Thing.kind"):
        thing.commit()


def test_commit_before_submit_is_refused(conn: Connection) -> None:
    with pytest.raises(ResourceStateError, match="not submitted"):
        Thing(conn).commit()


def test_partial_object_loads_on_a_missing_field(api: responses.RequestsMock,
                                                 conn: Connection) -> None:
    thing = Thing._from_json(conn, {"uuid": "t1", "name": "one", "state": "Running"}, partial=True)
    assert thing.name == "one"
    assert len(api.calls) == 0
    api.add("GET", URL, json=DOC)
    assert thing.labels == {"x": "1"}
    assert len(api.calls) == 1
    assert thing.kind == "k"
    assert len(api.calls) == 1


def test_repr_never_fetches_and_equality_by_uuid(api: responses.RequestsMock, conn: Connection,
                                                 thing: Thing, clock: FakeClock) -> None:
    clock.now += 100
    assert repr(thing) == "<Thing uuid='t1' name='one' state='Running'>"
    assert len(api.calls) == 0
    assert thing == Thing._from_json(conn, dict(DOC))
    assert hash(thing) == hash(Thing._from_json(conn, dict(DOC)))
    assert thing != Thing._from_json(conn, {**DOC, "uuid": "t2"})
    new1, new2 = Thing(conn), Thing(conn)
    assert new1 != new2 and new1 == new1


@pytest.mark.parametrize("text, expected", [
    ("2026-11-21T10:00:00.123456Z", datetime(2026, 11, 21, 10, 0, 0, 123456, timezone.utc)),
    ("2026-11-21T10:00:00.1234567Z", datetime(2026, 11, 21, 10, 0, 0, 123456, timezone.utc)),
    ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, 0, 0, 0, timezone.utc)),
    ("2026-11-21T10:00:00.5", datetime(2026, 11, 21, 10, 0, 0, 500000, timezone.utc)),
    ("2026-11-21T12:00:00+02:00", datetime(2026, 11, 21, 10, 0, 0, 0, timezone.utc)),
])
def test_parse_datetime(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected


def test_dump_datetime_and_bad_dates() -> None:
    assert dump_datetime(datetime(2026, 1, 2, 3, 4, 5, 6)) == "2026-01-02T03:04:05.000006Z"
    with pytest.raises(ValueError):
        parse_datetime("yesterday")


@pytest.mark.parametrize("kind", [qcompute.Task, qcompute.Pool, qcompute.Job])
def test_help_shows_the_public_api_with_field_docs(kind: type) -> None:
    """pydoc took a class with a ``_fields`` attribute for a namedtuple and listed every
    private member; the declared fields now carry their doc, mutability and wire key."""
    text = pydoc.render_doc(kind, renderer=pydoc.plaintext)
    members = re.findall(r"^ \|  (\w+)", text, re.M)
    assert "name" in members and "state" in members and "uuid" in members
    assert [m for m in members if m.startswith("_") and not m.startswith("__")] == []
    assert "wire key ``state``" in text
    assert "The server's id of the object." in text


def test_task_help_shows_field_docs() -> None:
    text = pydoc.render_doc(qcompute.Task, renderer=pydoc.plaintext)
    assert " |  constants\n |      Environment variables of every instance" in text
    assert "(writable until submitted; wire key ``constants``)" in text
