"""Base class of the server-side objects (Task, Pool, Job), and what they share.

A resource keeps the last server document and the local edits (see :mod:`qcompute._fields`),
refreshes it with :meth:`Resource.update` and writes edits back with :meth:`Resource.commit`.
:func:`poll` is the polling loop of the ``wait`` methods; :class:`OutputMethods` reads the
standard output and error of tasks and pools.
"""
from __future__ import annotations

import logging
import time
from enum import Enum
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Iterator, Optional,
                    TypeVar)

from ._fields import Field, FieldHolder, parse_datetime
from ._http import join_path
from .exceptions import NotFoundError, ReadOnlyFieldError, ResourceStateError

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Resource", "OutputMethods", "poll", "POLL_START", "POLL_FACTOR", "POLL_MAX"]

logger = logging.getLogger(__name__)

R = TypeVar("R", bound="Resource")

# Indirection so tests can drive the cache clock and the waits.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep

# wait(): poll every 0.05 s, then 1.5 times longer each time, at most every second.
POLL_START = 0.05
POLL_FACTOR = 1.5
POLL_MAX = 1.0


def poll(done: Callable[[], bool], timeout: Optional[float]) -> bool:
    """Call ``done()`` now, then after 0.05 s, growing 1.5 times each time up to 1 s, until it
    is true (→ True) or ``timeout`` seconds passed (→ False; ``None`` waits for ever). The last
    sleep is cut to the deadline, and ``done()`` is called once more then."""
    deadline = None if timeout is None else _clock() + timeout
    interval = POLL_START
    while True:
        if done():
            return True
        now = _clock()
        if deadline is not None and now >= deadline:
            return False
        _sleep(interval if deadline is None else min(interval, deadline - now))
        interval = min(interval * POLL_FACTOR, POLL_MAX)


class Resource(FieldHolder):
    """A server object with a uuid, cached fields, ``update()`` and ``commit()``.

    Attributes:
        auto_update: reading a volatile field refreshes stale data (default True).
        update_cache_time: seconds a fetched document stays fresh (default 5; 0 = always
            refetch; ``None`` = never refresh by itself).
    """

    __slots__ = ("_conn", "auto_update", "update_cache_time")

    _path: ClassVar[str] = ""  # collection path segment, e.g. "tasks"
    _not_found: ClassVar[type[NotFoundError]] = NotFoundError
    _repr_fields: ClassVar[tuple[str, ...]] = ("uuid",)

    uuid: Field[Optional[str]] = Field("uuid", read_only=True,
                                       doc="The server's id of the object.")

    def __init__(self, connection: "Connection") -> None:
        self._conn = connection
        self._init_fields()
        self.auto_update = True
        self.update_cache_time: Optional[float] = 5.0

    @classmethod
    def _from_json(
        cls: type[R], connection: "Connection", doc: dict[str, Any], *, partial: bool = False
    ) -> R:
        """Build an object from a server document (``partial`` for a summary)."""
        obj = cls.__new__(cls)
        Resource.__init__(obj, connection)
        obj._load(doc, partial=partial, now=_clock(), keep_changes=False)
        return obj

    # -- hooks used by the fields
    def _is_submitted(self) -> bool:
        return bool(self._data.get("uuid"))

    def _auto_refresh(self) -> None:
        if self.auto_update:
            self.update()

    def _complete(self) -> None:
        if self._is_submitted():
            self.update(flushcache=True)
        self._partial = False

    # -- helpers for subclasses
    def _url(self, *extra: Any) -> str:
        return join_path(self._path, self._data["uuid"], *extra)

    def _require_submitted(self, action: str) -> None:
        if not self._is_submitted():
            kind = type(self).__name__.lower()
            raise ResourceStateError(f"cannot {action}: the {kind} was not submitted")

    def _input_document(self, always: Iterable[str] = ()) -> dict[str, Any]:
        """The submission document: every writable field that was set (by the constructor, an
        assignment, or a value handed out), and the ``always`` wire keys even when null."""
        always = frozenset(always)
        doc: dict[str, Any] = {}
        for name, field in self._declared.items():
            wire = field.wire_name
            if field.read_only or not (wire in always or wire in self._data or name in self._cache):
                continue
            value = field.to_wire(self, getattr(self, name))
            if value is not None or wire in always:
                doc[wire] = value
        return doc

    def _create(self, path: str, not_found: type[NotFoundError]) -> str:
        """``POST`` the submission document; return the new uuid."""
        return str(self._post_new(path, not_found)["uuid"])

    def _post_new(self, path: str, not_found: type[NotFoundError],
                  headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """``POST`` the submission document; return the reply, which holds the new uuid."""
        if self._is_submitted():
            raise ResourceStateError(
                f"{type(self).__name__.lower()} {self._data['uuid']} is already submitted")
        reply = self._conn._http.post(path, json=self._submit_document(), not_found=not_found,
                                      headers=headers)
        if not isinstance(reply, dict) or not reply.get("uuid"):
            raise ResourceStateError(f"POST {path} answered without a uuid: {reply!r}")
        return reply

    def _submit_document(self) -> dict[str, Any]:
        return self._input_document()

    def _state_now(self) -> Any:
        """The cached ``state``, without a refresh."""
        return self._declared["state"].from_wire(self, self._data.get("state"))

    def _mark_local_state(self, state: str) -> None:
        """Set the cached state after an action the server acts on later (delete ...)."""
        self._data["state"] = state
        self._cache.pop("state", None)

    def _fetch(self, hold: float = 0.0, known_state: Optional[str] = None,
               until_final: bool = False) -> None:
        """GET the document; with ``hold``, a long poll: the server replies when the state
        differs from ``known_state`` (``until_final``: when it is final) or after ``hold``
        seconds. A server that does not know ``until`` replies at the first change."""
        params = {"wait": f"{round(hold, 3):g}", "knownState": known_state} if hold > 0 else None
        if params is not None and until_final:
            params["until"] = "final"
        doc = self._conn._http.get(self._url(), params=params, hold=hold,
                                   not_found=self._not_found)
        self._load(doc, now=_clock())

    @property
    def fetched_at(self) -> Optional[float]:
        """``time.monotonic()`` of the last fetch, ``None`` if never fetched."""
        return self._fetched_at

    def update(self, flushcache: bool = False) -> bool:
        """Refresh from the server if the data is stale (or always with ``flushcache``).

        Calls ``GET /<kind>/{uuid}``. Local edits are kept (and stay pending for ``commit()``).
        Does nothing for an object that was never submitted.

        Args:
            flushcache: fetch even if the data is younger than ``update_cache_time``.

        Returns:
            True if a request was sent.
        """
        if not self._is_submitted():
            return False
        if not flushcache and self._fetched_at is not None:
            ttl = self.update_cache_time
            if ttl is None or _clock() - self._fetched_at < ttl:
                return False
        self._fetch()
        return True

    def commit(self: R) -> R:
        """Send the local edits: ``PUT /<kind>/{uuid}`` with the whole document.

        The document is the last server state with the changed fields over it (assigned or
        mutated in place). Nothing changed: no request.

        Raises:
            ResourceStateError: the object was never submitted.
            ReadOnlyFieldError: a field fixed after submit was mutated in place.
        """
        self._require_submitted("commit")
        changed = self._changed_fields()
        if not changed:
            return self
        kind = type(self).__name__
        fixed = sorted(name for name in changed if self._declared[name].fixed_after_submit)
        if fixed:
            raise ReadOnlyFieldError(
                f"{', '.join(f'{kind}.{name}' for name in fixed)} cannot change once the "
                f"{kind.lower()} is submitted"
            )
        doc = self._document()
        logger.debug("commit %s %s: %s", kind, self._data["uuid"], sorted(changed))
        self._conn._http.put(self._url(), json=doc, not_found=self._not_found)
        self._mark_committed(doc)
        return self

    def __repr__(self) -> str:  # never fetches
        parts = []
        for name in self._repr_fields:
            field = self._declared[name]
            value = self._cache.get(name, field.from_wire(self, self._data.get(field.wire_name)))
            if isinstance(value, Enum):
                value = value.value
            parts.append(f"{name}={value!r}")
        return f"<{type(self).__name__} {' '.join(parts)}>"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        mine = self._data.get("uuid")
        return self is other or (mine is not None and mine == other._data.get("uuid"))  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        mine = self._data.get("uuid")
        return hash((type(self), mine)) if mine else id(self)


class Dated:
    """The server's dates of a pool or a job (fields are collected along the MRO)."""

    __slots__ = ()

    state_transition_time = Field("stateTransitionTime", volatile=True, parse=parse_datetime)
    previous_state_transition_time = Field("previousStateTransitionTime", volatile=True,
                                           parse=parse_datetime)
    last_modified = Field("lastModified", volatile=True, parse=parse_datetime)
    creation_date = Field("creationDate", read_only=True, parse=parse_datetime)
    end_date = Field("endDate", volatile=True, parse=parse_datetime)


class OutputMethods:
    """``stdout()``, ``stderr()``, their ``fresh_`` variants, ``follow()``, and the live
    telemetry of what runs (``running_instances``), for tasks and pools."""

    __slots__ = ()
    _not_found: ClassVar[type[NotFoundError]]
    _instance_not_found: ClassVar[type[NotFoundError]]
    _conn: "Connection"
    status: Any  # a volatile Field of Task and Pool

    @property
    def running_instances(self) -> list:
        """What runs now, with its CPU, memory and network use (refreshed with ``status``):
        a list of :class:`~qcompute.RunningInstance`, one per running instance or pool slot."""
        status = self.status
        return list(status.running_instances) if status is not None else []

    if TYPE_CHECKING:  # provided by Resource
        def _url(self, *extra: Any) -> str: ...
        def _require_submitted(self, action: str) -> None: ...
        def _state_now(self) -> Any: ...
        def _fetch(self, hold: float = 0.0) -> None: ...

    def _output(self, method: str, stream: str, instance_id: Optional[int]) -> str:
        self._require_submitted(f"read {stream}")
        extra = (stream,) if instance_id is None else (stream, instance_id)
        missing = self._not_found if instance_id is None else self._instance_not_found
        return str(self._conn._http.request(method, self._url(*extra), expect_json=False,
                                            not_found=missing))

    def stdout(self, instance_id: Optional[int] = None) -> str:
        """All standard output so far: ``GET /<kind>/{uuid}/stdout[/{instanceId}]``."""
        return self._output("GET", "stdout", instance_id)

    def stderr(self, instance_id: Optional[int] = None) -> str:
        """All standard error so far: ``GET /<kind>/{uuid}/stderr[/{instanceId}]``."""
        return self._output("GET", "stderr", instance_id)

    def follow(self, stream: str = "stdout", instance: Optional[int] = None) -> Iterator[str]:
        """The lines of the output as they are written, until the task (or pool) is final::

            for line in task.follow():
                print(line)

        Starts from the beginning of what the server keeps, and ends after the last line
        once the object is final (Success, Failure, Cancelled; a pool: Closed, Failure). A
        line is yielded when its newline arrives, without it (and without a ``\\r`` before
        it); the last line is yielded at the end even without a newline. Breaking out of the
        loop stops reading. It does not move the ``fresh_stdout()`` cursor: any number of
        followers can read at once.

        On a qcompute cluster each read is held by the server until new output arrives (no
        busy polling); on a server without that read (Qarnot's) it polls the object and its
        whole stream, 0.05 s apart growing to 1 s (see :mod:`qcompute._follow`).

        Args:
            stream: ``"stdout"`` or ``"stderr"``.
            instance: one instance's (a pool: one slot's) output; ``None`` for all of them,
                interleaved as they arrived.

        Raises:
            ValueError: another stream name.
            ResourceStateError: the object was not submitted.
            MissingTaskException: no such task (``MissingTaskInstanceException``: no such
                instance), or the pool equivalents.
        """
        from ._follow import follow_lines

        return follow_lines(self, stream, instance)

    def fresh_stdout(self, instance_id: Optional[int] = None) -> str:
        """Standard output since the last fresh read: ``POST /<kind>/{uuid}/stdout[/{id}]``."""
        return self._output("POST", "stdout", instance_id)

    def fresh_stderr(self, instance_id: Optional[int] = None) -> str:
        """Standard error since the last fresh read: ``POST /<kind>/{uuid}/stderr[/{id}]``."""
        return self._output("POST", "stderr", instance_id)
