"""Why a task is not running, and re-running what failed: :meth:`Task.explain` and
:meth:`Task.rerun_failed` (mixed into :class:`~qcompute.Task`).

``explain()`` reads ``GET /tasks/{uuid}/explain``, a qcompute cluster's own route (Qarnot's cloud
has none): the server computes the reasons from what its scheduler dispatches from.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Union

from .exceptions import MissingTaskException, NotFoundError, ResourceStateError
from .states import TaskState

if TYPE_CHECKING:
    from .task import Task

__all__ = ["Explanation", "Reason", "RERUN_LABEL"]

# The label a re-run carries: the uuid of the task whose failed instances it runs again.
RERUN_LABEL = "qcompute.rerunOf"

# What a re-run copies from its task's document, as submitted (here, and on the server in
# services.tasks.rerun_document): everything that defines the work and where its results go.
# Not copied: the name (suffixed), shortname (unique), the instances (the failed ones
# instead), the job and its dependencies (the re-run stands alone: the job may be over, and
# the parents have ended).
RERUN_FIELDS = ("profile", "poolUuid", "constants", "tags", "labels", "advancedResourceBuckets",
                "resultBucket", "resultsWhitelist", "resultsBlacklist", "snapshotWhitelist",
                "snapshotBlacklist", "retrySettings", "secretsAccessRights", "privileges",
                "hardwareConstraints", "maxTimeQueueSeconds", "uploadResultsOnCancellation",
                "waitForPoolResourcesSynchronization", "defaultResourcesCacheTTLSec",
                "autoDeleteOnCompletion", "completionTimeToLive")


@dataclass(frozen=True)
class Reason:
    """One reason: a ``code`` (``final``, ``aborting``, ``running``, ``dependency``,
    ``constraint``, ``pool``, ``capacity``, ``dispatching``, ``queue_timeout``), a sentence
    for people, and the facts behind it (``details``, as the server sent them: camelCase)."""

    code: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Explanation:
    """What :meth:`Task.explain` returns: the task's state, its instances per state, and the
    reasons it is not running (yet). ``str()`` gives the human text."""

    uuid: str
    state: Union[TaskState, str]
    instances: Mapping[str, int]
    reasons: tuple[Reason, ...]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Explanation":
        state = doc.get("state") or ""
        try:
            state = TaskState(state)
        except ValueError:
            pass
        reasons = tuple(
            Reason(code=str(r.get("code")), message=str(r.get("message")),
                   details={k: v for k, v in r.items() if k not in ("code", "message")})
            for r in doc.get("reasons") or ())
        return cls(uuid=str(doc.get("uuid")), state=state,
                   instances=dict(doc.get("instances") or {}), reasons=reasons)

    @property
    def codes(self) -> list[str]:
        return [reason.code for reason in self.reasons]

    def to_json(self) -> dict[str, Any]:
        """The route's document again (what ``qcompute task explain -o json`` prints)."""
        state = self.state.value if isinstance(self.state, TaskState) else self.state
        return {"uuid": self.uuid, "state": state, "instances": dict(self.instances),
                "reasons": [{"code": r.code, "message": r.message, **r.details}
                            for r in self.reasons]}

    def __str__(self) -> str:
        lines = [f"task {self.uuid} is {self.state}"]
        lines += [f"- {reason.message}" for reason in self.reasons]
        return "\n".join(lines)


class ExplainMethods:
    """``explain()`` and ``rerun_failed()`` of :class:`~qcompute.Task`."""

    __slots__ = ()

    if TYPE_CHECKING:
        _conn: Any
        _data: dict[str, Any]
        uuid: str

        def _url(self, *extra: Any) -> str: ...
        def _require_submitted(self, action: str) -> None: ...
        def update(self, flushcache: bool = False) -> Any: ...

    def explain(self) -> Explanation:
        """Why the task is not running (yet), computed by the cluster from what its scheduler
        dispatches from: ``GET /tasks/{uuid}/explain`` (a qcompute route).

        Returns:
            an :class:`Explanation`; ``print()`` it, or read its ``reasons``.

        Raises:
            ResourceStateError: the task was not submitted.
            MissingTaskException: no such task (or not yours).
            NotFoundError: the server has no such route (Qarnot's cloud: not a qcompute
                cluster).
        """
        self._require_submitted("explain it")
        try:
            doc = self._conn._http.get(self._url("explain"))
        except NotFoundError as exc:
            if exc.code == "task_not_found":
                raise MissingTaskException(exc.message, status_code=404, code=exc.code,
                                           request_id=exc.request_id) from None
            raise NotFoundError(
                f"{self._conn.cluster_url} has no GET /tasks/{{uuid}}/explain: explain() needs "
                "a qcompute cluster (Qarnot's cloud has no such route)", status_code=404,
                code=exc.code, request_id=exc.request_id) from None
        return Explanation.from_json(doc or {})

    def rerun_failed(self: "Task") -> "Task":  # type: ignore[misc]
        """Run the failed instances of this finished task again, as a new task.

        The new task has the same definition (profile or pool, constants, resources, result
        bucket and filters, tags, labels, retries, secrets access, privileges, hardware
        constraints, queue timeout), so its results land with the first run's. Its range is the
        failed instances' (``status.failedRange``, e.g. ``"3,7-9"``): each keeps its
        ``INSTANCE_ID``. It is named ``"<name> (rerun of failed)"`` and labelled
        ``qcompute.rerunOf=<this task's uuid>``. It is not in this task's job and has no
        dependencies (the job may be over, and the parents have ended). Cancelled instances
        are not re-run.

        Returns:
            the new task, submitted.

        Raises:
            ResourceStateError: the task was not submitted, is not finished, or has no failed
                instance.
        """
        from .task import Task

        self._require_submitted("re-run its failed instances")
        self.update(flushcache=True)
        state = self.state
        if not (isinstance(state, TaskState) and state.is_final()):
            raise ResourceStateError(f"task {self.uuid} is {state}: rerun_failed() needs a "
                                     "finished task (wait() for it first)")
        failed = self.status.failed_range if self.status is not None else None
        if not failed:
            raise ResourceStateError(f"task {self.uuid} ended {state} with no failed instance: "
                                     "nothing to re-run")
        rerun = Task(self._conn, f"{self.name} (rerun of failed)", None, failed)
        rerun._data.update({key: copy.deepcopy(self._data[key]) for key in RERUN_FIELDS
                            if self._data.get(key) is not None})
        if rerun._data.get("poolUuid"):  # a task in a pool runs with the pool's profile
            rerun._data["profile"] = None
        rerun.labels = {**self.labels, RERUN_LABEL: self.uuid}
        return rerun.submit()
