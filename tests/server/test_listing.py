"""Filtered paging: every operator on tasks through /tasks/paginate; pools and jobs pagers at the
service level; page tokens and sizes; malformed filters are 400s naming what is allowed."""
from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from qcompute.server.db.models import Job, JobTag, Pool, PoolTag, Task, User
from qcompute.server.errors import BadRequest
from qcompute.server.schemas import PageRequest
from qcompute.server.services.listing import page_jobs, page_pools

NAMES = ["alpha", "beta", "Gamma", "delta", "epsilon"]  # created on 2024-01-01 .. 2024-01-05
TAGS = [["red", "all"], ["blue", "all"], ["red", "blue", "all"], ["all"], []]


def leaf(operator: str, field: str, value) -> dict:
    return {"operator": operator, "field": field, "value": value}


def node(operator: str, *filters: dict) -> dict:
    return {"operator": operator, "filters": list(filters)}


@pytest.fixture
def tasks(cluster):
    uuids = [cluster.submit("true", name=n, tags=t) for n, t in zip(NAMES, TAGS, strict=True)]
    with cluster.client.app.state.ctx.sessions() as session:
        for day, uuid in enumerate(uuids, start=1):
            session.execute(update(Task).where(Task.uuid == uuid)
                            .values(created_at=datetime(2024, 1, day)))
        session.commit()
    return uuids


def names(cluster, filter_, **body) -> list[str]:
    reply = cluster.post("/tasks/paginate", json={"filter": filter_, **body})
    assert reply.status_code == 200, reply.text
    return [t["name"] for t in reply.json()["data"]]


@pytest.mark.parametrize("filter_, expected", [
    (None, NAMES),
    (leaf("Equal", "Name", "beta"), ["beta"]),
    (leaf("Equal", "nAmE", "beta"), ["beta"]),  # field names are case-insensitive
    (leaf("NotEqual", "Name", "beta"), ["alpha", "Gamma", "delta", "epsilon"]),
    (leaf("In", "Name", ["alpha", "delta", "zeta"]), ["alpha", "delta"]),
    (leaf("NotIn", "Name", ["alpha", "delta"]), ["beta", "Gamma", "epsilon"]),
    (leaf("In", "Name", []), []),
    (leaf("LessThan", "Name", "beta"), ["Gamma", "alpha"]),  # binary order: upper case first
    (leaf("Like", "Name", "%TA"), ["beta", "delta"]),  # Like ignores case
    (leaf("Like", "Name", "_amma"), ["Gamma"]),
    (leaf("LessThan", "CreationDate", "2024-01-02T00:00:00Z"), ["alpha"]),
    (leaf("LessThanOrEqual", "CreationDate", "2024-01-02"), ["alpha", "beta"]),
    (leaf("GreaterThan", "creationdate", "2024-01-04T00:00:00+00:00"), ["epsilon"]),
    (leaf("GreaterThanOrEqual", "CreationDate", "2024-01-04T01:00:00+01:00"),
     ["delta", "epsilon"]),
    (leaf("Equal", "CreationDate", "2024-01-03T00:00:00.000000Z"), ["Gamma"]),
    (leaf("In", "CreationDate", ["2024-01-01", "2024-01-05"]), ["alpha", "epsilon"]),
    (leaf("NotIn", "State", ["Success", "Failure", "Cancelled"]), NAMES),
    (leaf("Equal", "Profile", "docker-batch"), NAMES),
    (leaf("Equal", "Tags", "red"), ["alpha", "Gamma"]),
    (leaf("NotEqual", "tags", "red"), ["beta", "delta", "epsilon"]),
    (leaf("In", "Tags", ["red", "blue"]), ["alpha", "beta", "Gamma"]),
    (leaf("NotIn", "Tags", ["red", "blue"]), ["delta", "epsilon"]),
    (node("And", leaf("Equal", "Tags", "red"), leaf("Equal", "Tags", "blue")), ["Gamma"]),
    (node("Or", leaf("Equal", "Name", "alpha"), leaf("Equal", "Tags", "blue")),
     ["alpha", "beta", "Gamma"]),
    (node("And", leaf("Equal", "Tags", "all"),
          node("Or", leaf("Like", "Name", "%ta"),
               leaf("GreaterThan", "CreationDate", "2024-01-02"))),
     ["beta", "Gamma", "delta"]),
])
def test_task_filters(cluster, tasks, filter_, expected):
    assert sorted(names(cluster, filter_)) == sorted(expected)


def test_uuid_filter_and_pages_keep_submission_order(cluster, tasks):
    assert names(cluster, leaf("In", "Uuid", tasks[3:])) == NAMES[3:]
    seen, token, sizes = [], None, []
    while True:
        page = cluster.post("/tasks/paginate", json={"filter": leaf("Equal", "Tags", "all"),
                                                     "token": token, "maximumResults": 2}).json()
        assert page["token"] == token
        seen += [t["name"] for t in page["data"]]
        sizes.append(len(page["data"]))
        if not page["isTruncated"]:
            assert page["nextToken"] is None
            break
        token = page["nextToken"]
    assert (seen, sizes) == (NAMES[:4], [2, 2])


@pytest.mark.parametrize("filter_, words", [
    (leaf("Equal", "Colour", "red"), ["'Colour'", "Tags", "Name", "CreationDate"]),
    (leaf("Matches", "Name", "x"), ["'Matches'", "And", "Or", "Like", "NotIn"]),
    ({"operator": "Equal", "value": "x"}, ["field"]),
    (leaf("LessThan", "Tags", "red"), ["LessThan", "Tags", "Equal, NotEqual, In"]),
    (leaf("Like", "Tags", "r%"), ["Like", "Tags"]),
    (leaf("LessThan", "CreationDate", "yesterday"), ["CreationDate", "ISO 8601", "yesterday"]),
    (leaf("Equal", "CreationDate", 20240101), ["CreationDate", "ISO 8601"]),
    (leaf("Like", "CreationDate", "2024%"), ["Like", "CreationDate"]),
    (leaf("Equal", "Name", 3), ["Name", "string"]),
    (leaf("LessThan", "Name", None), ["Name", "string"]),
    (leaf("In", "Name", "alpha"), ["In", "list"]),
    (leaf("NotIn", "Tags", [1]), ["Tags", "string"]),
    (leaf("Equal", "Tags", None), ["Tags", "string"]),
    (node("And"), ["And", "non-empty"]),
    ({"operator": "Or"}, ["Or", "non-empty"]),
    ({"operator": "Or", "filters": "x"}, ["Or", "non-empty"]),
    (["Equal"], ["filter"]),
    (node("And", "x"), ["object"]),
])
def test_bad_filters_are_400(cluster, filter_, words):
    reply = cluster.post("/tasks/paginate", json={"filter": filter_})
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["code"] in ("invalid_filter", "invalid_page_request")
    for word in words:
        assert word in body["message"], (word, body["message"])


def test_bad_tokens_sizes_and_nesting_are_400(cluster):
    deep = leaf("Equal", "Name", "x")
    for _ in range(40):
        deep = node("And", deep)
    bodies = [{"token": "abc"}, {"maximumResults": 0}, {"maximumResults": 1001},
              {"filter": deep}]
    for body in bodies:
        assert cluster.post("/tasks/paginate", json=body).status_code == 400, body


# -- pools and jobs, at the service level -----------------------------------------------------

def _owner(session) -> User:
    return session.scalar(select(User).where(User.is_owner))


def _stranger(session) -> User:
    user = User(email="other@example.com", token_hash="0" * 64)
    session.add(user)
    session.flush()
    return user


def _pool(owner: User, n: int, state: str, tags: list[str]) -> Pool:
    return Pool(uuid=f"00000000-0000-0000-0000-00000000000{n}", owner_id=owner.id,
                name=f"pool{n}", shortname=f"p{n}", profile="docker-batch" if n % 2 else "other",
                document={}, state=state, created_at=datetime(2024, 2, n + 1),
                tags=[PoolTag(tag=t, position=i) for i, t in enumerate(tags)])


def _job(owner: User, n: int, tags: list[str]) -> Job:
    return Job(uuid=f"10000000-0000-0000-0000-00000000000{n}", owner_id=owner.id,
               name=f"job{n}", shortname=f"j{n}", document={}, state="Completed",
               created_at=datetime(2024, 3, n + 1),
               tags=[JobTag(tag=t, position=i) for i, t in enumerate(tags)])


def _page(pager, session, user, filter_=None, **kw):
    rows, token = pager(session, user, PageRequest(filter=filter_, **kw))
    return [r.name for r in rows], token


def test_pool_pager(cluster):
    with cluster.client.app.state.ctx.sessions() as session:
        owner, stranger = _owner(session), _stranger(session)
        session.add_all([_pool(owner, n, "Closed" if n < 3 else "Failure",
                               ["even" if n % 2 == 0 else "odd"]) for n in range(5)])
        session.add(_pool(stranger, 9, "Closed", ["odd"]))
        session.flush()
        assert _page(page_pools, session, owner) == (["pool0", "pool1", "pool2", "pool3",
                                                      "pool4"], None)
        assert _page(page_pools, session, stranger)[0] == ["pool9"]
        assert _page(page_pools, session, owner, leaf("Equal", "Tags", "odd"))[0] == [
            "pool1", "pool3"]
        assert _page(page_pools, session, owner, leaf("Equal", "STATE", "Failure"))[0] == [
            "pool3", "pool4"]
        assert _page(page_pools, session, owner, leaf("Equal", "Profile", "other"))[0] == [
            "pool0", "pool2", "pool4"]
        assert _page(page_pools, session, owner, node("And", leaf(
            "GreaterThanOrEqual", "CreationDate", "2024-02-03"), leaf("Like", "Shortname",
                                                                     "P%")))[0] == [
            "pool2", "pool3", "pool4"]
        first, token = _page(page_pools, session, owner, maximumResults=3)
        rest, end = _page(page_pools, session, owner, token=token, maximumResults=3)
        assert (first, rest, end) == (["pool0", "pool1", "pool2"], ["pool3", "pool4"], None)
        session.rollback()


def test_job_pager(cluster):
    with cluster.client.app.state.ctx.sessions() as session:
        owner = _owner(session)
        session.add_all([_job(owner, n, ["x"] if n == 1 else []) for n in range(4)])
        session.flush()
        assert _page(page_jobs, session, owner, leaf("NotEqual", "Tags", "x"))[0] == [
            "job0", "job2", "job3"]
        assert _page(page_jobs, session, owner, leaf("LessThan", "CreationDate",
                                                     "2024-03-02T00:00:00Z"))[0] == ["job0"]
        with pytest.raises(BadRequest) as err:  # jobs have no profile
            _page(page_jobs, session, owner, leaf("Equal", "Profile", "docker-batch"))
        assert "'Profile'" in err.value.message and "Profile," not in err.value.message
        first, token = _page(page_jobs, session, owner, maximumResults=1)
        assert first == ["job0"] and token is not None
        with pytest.raises(ValidationError):  # PageRequest refuses it (a 400 over HTTP)
            _page(page_jobs, session, owner, token="-1")
        session.rollback()


# -- legacy listings: every item, never a silent first 1,000 ----------------------------------

def test_legacy_task_listings_return_every_task(cluster):
    doc = {"profile": "docker-batch", "constants": [{"key": "DOCKER_CMD", "value": "true"}]}
    bulk = [{**doc, "name": f"n{i}", "tags": ["odd" if i % 2 else "even"]} for i in range(1200)]
    reply = cluster.post("/tasks", json=bulk)
    assert reply.status_code == 200
    uuids = [item["uuid"] for item in reply.json()]
    listed = cluster.get("/tasks").json()
    assert [t["uuid"] for t in listed] == uuids  # all 1,200, oldest first
    assert all(t["status"] and "completedInstances" in t for t in listed)
    assert [t["uuid"] for t in cluster.get("/tasks/summaries").json()] == uuids
    odd = cluster.get("/tasks", params={"tag": "odd"}).json()
    assert [t["uuid"] for t in odd] == uuids[1::2]


def test_legacy_pool_and_job_listings_return_every_one(cluster):
    with cluster.client.app.state.ctx.sessions() as session:
        owner = _owner(session)
        session.add_all(Pool(uuid=f"20000000-0000-0000-0000-{n:012d}", owner_id=owner.id,
                             name=f"pool{n}", shortname=f"p{n}", profile="docker-batch",
                             document={}, state="Closed") for n in range(1200))
        session.add_all(Job(uuid=f"30000000-0000-0000-0000-{n:012d}", owner_id=owner.id,
                            name=f"job{n}", shortname=f"j{n}", document={}, state="Completed",
                            tags=[JobTag(tag="t")] if n % 3 == 0 else [])
                        for n in range(1200))
        session.commit()
    names = [f"pool{n}" for n in range(1200)]
    assert [p["name"] for p in cluster.get("/pools").json()] == names
    assert [p["name"] for p in cluster.get("/pools/summaries").json()] == names
    assert [j["name"] for j in cluster.get("/jobs").json()] == [f"job{n}" for n in range(1200)]
    assert len(cluster.get("/jobs", params={"tag": "t"}).json()) == 400
