"""Jobs: a group of tasks, optionally in one pool and ordered by dependencies."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from . import _resource
from ._fields import Field, parse_enum
from ._resource import Dated, Resource
from ._wire import instance_of, nonempty_name, optional_str, str_list, timespan, uuid_of
from .exceptions import MissingJobException, MissingPoolException
from .states import JobState
from .task import Task

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Job"]

_ALWAYS_SENT = frozenset({"name", "poolUuid", "useDependencies", "tags"})


class Job(Dated, Resource):
    """A job: tasks created with ``create_task(..., job=job)`` belong to it; with
    ``use_dependencies`` their dependencies are honoured; ``max_wall_time`` bounds its life.

    The dialect has no update of a job, so every field is fixed once submitted (setting one
    raises :class:`~qcompute.ReadOnlyFieldError`, and :meth:`commit` never sends anything).
    Volatile fields (``state``, ``previous_state``, transition dates, ``end_date``) refresh
    the job when its data is older than ``update_cache_time`` (5 s) while ``auto_update`` is on.

    Args:
        connection: the owning connection.
        name: a display name.
        pool: a :class:`~qcompute.Pool` or a pool uuid: the job's tasks run there.
        shortname: a unique DNS-compliant name.
        use_dependencies: honour the dependencies of the job's tasks.
    """

    __slots__ = ()
    _path = "jobs"
    _not_found = MissingJobException
    _repr_fields = ("uuid", "name", "state")

    name: Field[str] = Field("name", fixed_after_submit=True,
                             validate=lambda o, v: nonempty_name(v))
    shortname: Field[Optional[str]] = Field("shortname", fixed_after_submit=True,
                                            validate=optional_str)
    pool_uuid: Field[Optional[str]] = Field(
        "poolUuid", fixed_after_submit=True,
        validate=lambda o, v: None if v is None else uuid_of(v, "pool"))
    use_dependencies: Field[bool] = Field("useDependencies", fixed_after_submit=True,
                                          default=False,
                                          validate=instance_of(bool, optional=False))
    max_wall_time = timespan("maxWallTime", fixed_after_submit=True)
    tags: Field[list[str]] = Field("tags", fixed_after_submit=True, default=list,
                                   validate=str_list)
    auto_delete: Field[bool] = Field("autoDeleteOnCompletion", fixed_after_submit=True,
                                     default=False, validate=instance_of(bool, optional=False))
    completion_ttl = timespan("completionTimeToLive", fixed_after_submit=True)

    state: Field[Union[JobState, str]] = Field(
        "state", volatile=True, parse=parse_enum(JobState), default=JobState.UNSUBMITTED)
    previous_state: Field[Union[JobState, str, None]] = Field(
        "previousState", volatile=True, parse=parse_enum(JobState))

    def __init__(self, connection: "Connection", name: str, pool: Any = None,
                 shortname: Optional[str] = None, use_dependencies: bool = False) -> None:
        super().__init__(connection)
        if not isinstance(use_dependencies, bool):
            raise TypeError(f"use_dependencies must be True or False, got {use_dependencies!r}")
        self._data.update({"name": nonempty_name(name), "useDependencies": use_dependencies,
                           "poolUuid": None if pool is None else uuid_of(pool, "pool")})
        if shortname is not None:
            self._data["shortname"] = optional_str(self, shortname)

    def _submit_document(self) -> dict[str, Any]:
        """The ``POST /jobs/`` document (reference §1.7, without the odd empty ``state``)."""
        return self._input_document(_ALWAYS_SENT)

    def submit(self) -> "Job":
        """Create the job: ``POST /jobs/``, then ``GET /jobs/{uuid}``.

        Raises:
            ResourceStateError: already submitted.
            MissingPoolException: the server answered 404 (the pool is missing).
            BadRequestError: the server refused the document.
        """
        self._data["uuid"] = self._create("/jobs/", MissingPoolException)
        self._load(self._conn._http.get(self._url(), not_found=MissingJobException),
                   now=_resource._clock(), keep_changes=False)
        return self

    def terminate(self) -> "Job":
        """Abort the job's remaining tasks and end the job: ``POST /jobs/{uuid}/terminate``,
        then refresh."""
        self._require_submitted("terminate")
        self._conn._http.post(self._url("terminate"), not_found=MissingJobException)
        self.update(flushcache=True)
        return self

    def delete(self, force: bool = False) -> None:
        """Delete the job: ``DELETE /jobs/{uuid}?force=true|false``.

        Args:
            force: abort the job's running tasks first (without it, the server may refuse to
                delete an active job).
        """
        self._require_submitted("delete")
        self._conn._http.delete(self._url(), params={"force": "true" if force else "false"},
                                not_found=MissingJobException)
        self.auto_update = False
        self._mark_local_state(JobState.DELETING.value)

    def tasks(self) -> list[Task]:
        """The job's tasks: ``GET /jobs/{uuid}/tasks`` (a request on every call).

        The tasks are bound to the connection and marked partial: a field missing from the
        listing loads the whole task on first read.
        """
        self._require_submitted("list its tasks")
        reply = self._conn._http.get(self._url("tasks"), not_found=MissingJobException)
        docs = reply.get("data") if isinstance(reply, dict) else reply
        return [Task._from_json(self._conn, doc, partial=True) for doc in docs or ()]

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the job is Completed, polling ``GET /jobs/{uuid}`` after 0.05 s, then
        1.5 times later each time, at most every second.

        Returns:
            True when completed; False on timeout, or if the job was never submitted.
        """
        if not self._is_submitted():
            return False

        def done() -> bool:
            self._fetch()
            state = self._state_now()
            return isinstance(state, JobState) and state.is_final()

        return _resource.poll(done, timeout)
