"""Filtered, paged listing of tasks, pools and jobs (``POST /<kind>/paginate``, reference §1.4).

A filter is a tree: nodes ``{"operator": "And"|"Or", "filters": [...]}``, leaves
``{"operator", "field", "value"}``. Field names are case-insensitive. ``Tags`` takes Equal,
NotEqual, In and NotIn (through the tag table); columns take every leaf operator, with values
of the column's type (ISO 8601 strings for dates). ``Like`` is a case-insensitive SQL pattern
(``%`` any run, ``_`` one character). Pages go oldest first; the token is the last row's id.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Optional

from sqlalchemy import (BigInteger, Column, DateTime, Float, Integer, and_, exists, literal, not_,
                        or_, select)
from sqlalchemy.orm import Session

from ..db.models import Job, JobTag, Pool, PoolTag, Task, TaskTag, User
from ..errors import BadRequest, validate
from ..schemas import PageRequest
from ..schemas.tasks import MAX_FILTER_DEPTH

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "JOB_COLUMNS", "POOL_COLUMNS", "TASK_COLUMNS",
           "every", "page", "page_jobs", "page_pools", "page_tasks", "tag_filter"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000  # PageRequest.maximumResults' bound

TASK_COLUMNS = {"Name": Task.name, "Shortname": Task.shortname, "State": Task.state,
                "Uuid": Task.uuid, "Profile": Task.profile, "CreationDate": Task.created_at}
POOL_COLUMNS = {"Name": Pool.name, "Shortname": Pool.shortname, "State": Pool.state,
                "Uuid": Pool.uuid, "Profile": Pool.profile, "CreationDate": Pool.created_at}
JOB_COLUMNS = {"Name": Job.name, "Shortname": Job.shortname, "State": Job.state,
               "Uuid": Job.uuid, "CreationDate": Job.created_at}

_COMPARE = {"Equal": "__eq__", "NotEqual": "__ne__", "LessThan": "__lt__",
            "LessThanOrEqual": "__le__", "GreaterThan": "__gt__", "GreaterThanOrEqual": "__ge__"}
_LIST = ("In", "NotIn")
_LEAF_OPERATORS = (*_COMPARE, *_LIST, "Like")
_TAG_OPERATORS = ("Equal", "NotEqual", "In", "NotIn")


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_filter")


def _parse_date(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is not None:  # stored naive, in UTC
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def _coerce(field: str, column: Any, value: Any, *, nullable: bool = False) -> Any:
    """``value`` as the column's type, or a 400 saying what the field expects."""
    if value is None and nullable:
        return None
    kind = column.type
    if isinstance(kind, DateTime):
        if isinstance(value, str):
            try:
                return _parse_date(value)
            except ValueError:
                pass
        raise _bad(f"field {field} expects an ISO 8601 date (2024-01-31T12:00:00Z), "
                   f"got {value!r}")
    if isinstance(kind, (Integer, Float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # typed by the value, not the column: PostgreSQL's 32-bit columns refuse a wider
            # int, and would round a float (SQLite compares them as they are)
            return literal(value, BigInteger if isinstance(value, int) else Float)
        raise _bad(f"field {field} expects a number, got {value!r}")
    if isinstance(value, str):
        return value
    raise _bad(f"field {field} expects a string, got {value!r}")


def _values(field: str, operator: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(f"{operator} on {field} expects a list of values, got {value!r}")
    return value


class _Compiler:
    """Turns a filter tree into a SQL condition over ``model`` and its tag table."""

    def __init__(self, model: Any, tag_model: Any, columns: dict[str, Any]) -> None:
        self.model, self.tag_model, self.columns = model, tag_model, columns
        self.by_lower = {name.lower(): (name, col) for name, col in columns.items()}
        fk = next(iter(tag_model.__table__.foreign_keys))
        self.tag_owner = fk.parent  # e.g. task_tags.task_id

    def compile(self, node: Any, depth: int = 0) -> Any:
        if not isinstance(node, dict):
            raise _bad(f"a filter must be an object with an operator, got {node!r}")
        if depth > MAX_FILTER_DEPTH:  # PageRequest refuses it first
            raise _bad(f"the filter is nested more than {MAX_FILTER_DEPTH} levels deep")
        operator = node.get("operator")
        if operator in ("And", "Or"):
            children = node.get("filters")
            if not isinstance(children, list) or not children:
                raise _bad(f"an {operator} filter needs a non-empty 'filters' list")
            compiled = [self.compile(child, depth + 1) for child in children]
            return and_(*compiled) if operator == "And" else or_(*compiled)
        if operator not in _LEAF_OPERATORS:
            raise _bad(f"unknown filter operator {operator!r}; use one of And, Or, "
                       + ", ".join(_LEAF_OPERATORS))
        field = node.get("field")
        if not isinstance(field, str):
            raise _bad(f"a {operator} filter needs a 'field' (a string), got {field!r}")
        if field.lower() == "tags":
            return self._tags(operator, node.get("value"))
        if field.lower() not in self.by_lower:
            raise _bad(f"cannot filter on field {field!r}; use one of Tags, "
                       + ", ".join(self.columns))
        return self._column(*self.by_lower[field.lower()], operator, node.get("value"))

    def _tags(self, operator: str, value: Any) -> Any:
        if operator not in _TAG_OPERATORS:
            raise _bad(f"operator {operator} is not supported on Tags; use one of "
                       + ", ".join(_TAG_OPERATORS))
        tag = self.tag_model.tag
        if operator in _LIST:
            tags = [_coerce("Tags", tag, v) for v in _values("Tags", operator, value)]
            condition = tag.in_(tags)
        else:
            condition = tag == _coerce("Tags", tag, value)
        has = exists().where(self.tag_owner == self.model.id, condition)
        return has if operator in ("Equal", "In") else not_(has)

    def _column(self, field: str, column: Any, operator: str, value: Any) -> Any:
        if operator in _LIST:
            values = [_coerce(field, column, v) for v in _values(field, operator, value)]
            return column.in_(values) if operator == "In" else column.not_in(values)
        if operator == "Like":
            if isinstance(column.type, (DateTime, Integer, Float)):
                raise _bad(f"Like applies to text fields only, not to {field}")
            return column.ilike(_coerce(field, column, value))
        nullable = operator in ("Equal", "NotEqual")
        return getattr(column, _COMPARE[operator])(_coerce(field, column, value,
                                                           nullable=nullable))


def page(session: Session, user: User, model: Any, tag_model: Any,
         columns: dict[str, Column], request: PageRequest, *,
         newest_first: bool = False) -> tuple[list[Any], Optional[str]]:
    """One page of ``model`` rows the user owns, oldest first (the console: newest first),
    and the next page's token.

    Args:
        model: the ORM class (``Task``, ``Pool``, ``Job``): it has ``id`` and ``owner_id``.
        tag_model: its tag table (``TaskTag`` ...): a ``tag`` column and a foreign key to it.
        columns: the filterable fields, ``{"Name": Task.name, ...}`` (matched case-insensitively).
        request: ``{"filter", "token", "maximumResults"}``.
        newest_first: page from the newest row back (the token is then an upper bound).

    Returns:
        The rows, and the token of the next page (``None`` on the last page).

    Raises:
        BadRequest: a malformed filter (``invalid_filter``). The filter's size and the token
            are checked by :class:`~qcompute.server.schemas.PageRequest`.
    """
    query = select(model).where(model.owner_id == user.id)
    if request.filter:
        query = query.where(_Compiler(model, tag_model, columns).compile(request.filter))
    if request.token:  # digits within the 64-bit range (checked by PageRequest); compared as
        # a 64-bit value: ids are 32-bit on PostgreSQL, where a wider parameter is an error
        bound = literal(int(request.token), BigInteger)
        query = query.where(model.id < bound if newest_first else model.id > bound)
    size = request.maximum_results or DEFAULT_PAGE_SIZE
    order = model.id.desc() if newest_first else model.id
    rows = list(session.scalars(query.order_by(order).limit(size + 1)))
    if len(rows) > size:
        return rows[:size], str(rows[size - 1].id)
    return rows, None


def tag_filter(tags: Optional[list[str]]) -> PageRequest:
    """The request of a legacy listing (``GET /tasks?tag=a&tag=b``): objects with any of these
    tags (400 for a tag that cannot be one)."""
    leaf = {"operator": "In", "field": "Tags", "value": tags} if tags else None
    return validate(PageRequest, {"filter": leaf, "maximumResults": MAX_PAGE_SIZE},
                    code="invalid_request")


Pages = Callable[[Session, User, PageRequest], tuple[list[Any], Optional[str]]]


def every(pages: Pages, session: Session, user: User,
          request: Optional[PageRequest] = None) -> Iterator[list[Any]]:
    """Every row the user owns (that ``request`` filters), a page of :data:`MAX_PAGE_SIZE` at a
    time: the legacy ``GET`` listings answer the whole list, never a silent first page."""
    request = request or tag_filter(None)
    token: Optional[str] = None
    while True:
        rows, token = pages(session, user, request.model_copy(update={"token": token}))
        yield rows
        if token is None:
            return


def page_tasks(session: Session, user: User, request: PageRequest, *,
               newest_first: bool = False) -> tuple[list[Task], Optional[str]]:
    return page(session, user, Task, TaskTag, TASK_COLUMNS, request, newest_first=newest_first)


def page_pools(session: Session, user: User, request: PageRequest, *,
               newest_first: bool = False) -> tuple[list[Pool], Optional[str]]:
    return page(session, user, Pool, PoolTag, POOL_COLUMNS, request, newest_first=newest_first)


def page_jobs(session: Session, user: User, request: PageRequest, *,
              newest_first: bool = False) -> tuple[list[Job], Optional[str]]:
    return page(session, user, Job, JobTag, JOB_COLUMNS, request, newest_first=newest_first)
