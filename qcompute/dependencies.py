"""Task dependencies: a task of a job with ``use_dependencies`` waits for other tasks.

Two exclusive forms (``dependencies`` on the wire):

* simple: ``{"dependsOn": [uuid, ...]}``: start once those tasks succeeded;
* advanced: ``{"advancedDependsOn": [{"taskUuid", "taskFinalStateCondition"}]}``: start once
  each task ended in one of the listed final states (``success``, ``failure``, ``cancelled``).

The server adds read-only facts: the overall ``state`` and, per advanced entry, ``state`` and
``actualFinalState``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Optional, Union

from ._wire import uuid_of

if TYPE_CHECKING:
    from .task import Task

__all__ = ["FinalStateCondition", "AdvancedDependency", "Dependencies"]

TaskRef = Union[str, "Task"]


class FinalStateCondition(str, Enum):
    """A final state an advanced dependency accepts."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


def _condition(value: Any) -> FinalStateCondition:
    try:
        return FinalStateCondition(str(value).lower())
    except ValueError:
        raise ValueError(f"a final-state condition is one of success, failure, cancelled; "
                         f"got {value!r}") from None


@dataclass(frozen=True)
class AdvancedDependency:
    """Wait for ``task`` to end in one of ``conditions``.

    Args:
        task: a submitted task, or its uuid.
        conditions: accepted final states (``FinalStateCondition`` or their names); ``None``
            leaves the choice to the server.
        state: the server's state of this dependency (read only).
        actual_final_state: the final state the task ended in (read only).
    """

    task: TaskRef
    conditions: Optional[tuple[FinalStateCondition, ...]] = (FinalStateCondition.SUCCESS,)
    state: Optional[str] = field(default=None, compare=False)
    actual_final_state: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", uuid_of(self.task, "an advanced dependency's task"))
        if self.conditions is not None:
            items = [self.conditions] if isinstance(self.conditions, str) else self.conditions
            object.__setattr__(self, "conditions",
                               tuple(dict.fromkeys(_condition(c) for c in items)))

    @property
    def task_uuid(self) -> str:
        return str(self.task)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "AdvancedDependency":
        conditions = doc.get("taskFinalStateCondition")
        return cls(doc["taskUuid"], None if conditions is None else tuple(conditions),
                   doc.get("state"), doc.get("actualFinalState"))

    def to_json(self) -> dict[str, Any]:
        conditions = None if self.conditions is None else [c.value for c in self.conditions]
        return {"taskUuid": self.task_uuid, "taskFinalStateCondition": conditions}


@dataclass(frozen=True)
class Dependencies:
    """The dependencies of a task: simple (``depends_on``) or advanced, never both.

    Raises:
        ValueError: both forms given, or one task given twice with different conditions.
    """

    depends_on: tuple[str, ...] = ()
    advanced: tuple[AdvancedDependency, ...] = ()
    state: Optional[str] = field(default=None, compare=False)  # read only

    def __post_init__(self) -> None:
        object.__setattr__(self, "depends_on", tuple(dict.fromkeys(
            uuid_of(ref, "a dependency") for ref in self.depends_on)))
        if self.depends_on and self.advanced:
            raise ValueError("a task has simple dependencies (depends_on) or advanced ones "
                             "(with final-state conditions), not both: clear one form first")
        merged: dict[str, AdvancedDependency] = {}
        for dep in self.advanced:
            known = merged.get(dep.task_uuid)
            if known is not None and known.conditions != dep.conditions:
                raise ValueError(f"task {dep.task_uuid} is given twice with different "
                                 f"conditions: {known.conditions} and {dep.conditions}")
            merged[dep.task_uuid] = dep
        object.__setattr__(self, "advanced", tuple(merged.values()))

    def __bool__(self) -> bool:
        return bool(self.depends_on or self.advanced)

    @property
    def uuids(self) -> tuple[str, ...]:
        """The uuids of the tasks waited for, in either form."""
        return self.depends_on or tuple(d.task_uuid for d in self.advanced)

    def without(self, uuid: str) -> "Dependencies":
        return Dependencies(tuple(u for u in self.depends_on if u != uuid),
                            tuple(d for d in self.advanced if d.task_uuid != uuid))

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> "Dependencies":
        doc = doc or {}
        advanced = doc.get("advancedDependsOn") or ()
        return cls(tuple(doc.get("dependsOn") or ()),
                   tuple(AdvancedDependency.from_json(d) for d in advanced), doc.get("state"))

    def to_json(self) -> Optional[dict[str, Any]]:
        """The input form, or ``None`` when there is no dependency."""
        if self.advanced:
            return {"advancedDependsOn": [d.to_json() for d in self.advanced]}
        return {"dependsOn": list(self.depends_on)} if self.depends_on else None


class DependencyMethods:
    """The dependency helpers of :class:`~qcompute.Task`. They change ``dependencies``, so
    once the task is submitted they raise :class:`~qcompute.ReadOnlyFieldError`."""

    if not TYPE_CHECKING:  # no __dict__ at run time; mypy sees Task's fields
        __slots__ = ()
    dependencies: Dependencies
    _declared: ClassVar[dict[str, Any]]

    def _change_dependencies(self, depends_on: Iterable[TaskRef] = (),
                             advanced: Iterable[AdvancedDependency] = ()) -> None:
        self._declared["dependencies"].check_writable(self)  # before any other check
        current = self.dependencies
        self.dependencies = Dependencies(current.depends_on + tuple(depends_on),  # type: ignore[arg-type]
                                         current.advanced + tuple(advanced))

    def set_task_dependencies_from_uuids(self, uuids: Iterable[str]) -> None:
        """Add simple dependencies: start after these tasks succeeded.

        Raises:
            ValueError: the task has advanced dependencies.
        """
        self._change_dependencies(depends_on=uuids)

    def set_task_dependencies_from_tasks(self, tasks: Iterable["Task"]) -> None:
        """Add simple dependencies on submitted tasks."""
        self._change_dependencies(depends_on=[uuid_of(t, "a dependency") for t in tasks])

    def set_task_advanced_dependencies(self, dependencies: Iterable[AdvancedDependency]) -> None:
        """Add advanced dependencies (with final-state conditions).

        Raises:
            ValueError: the task has simple dependencies, or a task is given twice with
                different conditions.
        """
        self._change_dependencies(advanced=dependencies)

    def remove_task_dependency(self, task: TaskRef) -> None:
        """Drop the dependency on ``task`` (a task or a uuid), in either form."""
        self._declared["dependencies"].check_writable(self)
        self.dependencies = self.dependencies.without(uuid_of(task, "a dependency"))

    def clear_task_dependencies(self) -> None:
        self.dependencies = Dependencies()
