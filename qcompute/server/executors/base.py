"""The executor seam: what the scheduler hands to an executor, and the events it gets back.

Executors move instances, nothing else. They know nothing about HTTP or SQL. The scheduler calls
:meth:`Executor.submit` for an instance it has marked dispatched (and committed), and
:meth:`Executor.cancel` on abort. Everything the executor learns flows back as events through the
``on_event`` callback given at construction; the callback is thread-safe and never blocks for long.

Events are plain dataclasses, also serialised as JSON lines between the runner process and the
local executor (see :func:`event_to_json` / :func:`event_from_json`).
"""
from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Optional, Union

__all__ = [
    "S3Access", "ResourceSpec", "InstanceSpec", "InstanceKey",
    "Phase", "Output", "Finished", "ExecutorEvent", "Executor",
    "event_to_json", "event_from_json",
]


@dataclass(frozen=True)
class S3Access:
    """How the runner reaches S3."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


@dataclass(frozen=True)
class ResourceSpec:
    """One resource bucket of a task (the dialect's ``advancedResourceBuckets`` entry)."""

    bucket: str
    prefix: str = ""  # only keys starting with this prefix are downloaded
    strip_prefix: str = ""  # removed from the start of each key to give the local path


@dataclass(frozen=True)
class InstanceKey:
    task_uuid: str
    instance_id: int
    attempt: int


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to run one instance, anywhere. Serialisable with ``asdict``."""

    task_uuid: str
    instance_id: int
    attempt: int
    command: str  # run through ``sh -c`` in a new session
    env: dict[str, str]  # constants, INSTANCE_ID, FRAME_ID, INSTANCE_COUNT, QRANK, QSIZE, ...
    workdir: str  # a fresh directory the runner creates (and removes at the end)
    s3: Optional[S3Access] = None
    resources: tuple[ResourceSpec, ...] = ()
    result_bucket: Optional[str] = None
    results_prefix: str = ""  # key prefix for uploaded results (empty: bucket root)
    results_whitelist: Optional[str] = None  # regex on the relative POSIX path
    results_blacklist: Optional[str] = None
    upload_results_on_cancel: bool = False
    kill_grace_seconds: float = 5.0

    @property
    def key(self) -> InstanceKey:
        return InstanceKey(self.task_uuid, self.instance_id, self.attempt)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "InstanceSpec":
        data = json.loads(text)
        s3 = S3Access(**data.pop("s3")) if data.get("s3") else None
        data.pop("s3", None)
        resources = tuple(ResourceSpec(**r) for r in data.pop("resources", ()))
        return cls(s3=s3, resources=resources, **data)


PhaseName = Literal["downloading", "running", "uploading"]


@dataclass(frozen=True)
class Phase:
    """The instance entered a phase. ``running`` means the command's process has started."""

    key: InstanceKey
    phase: PhaseName
    kind: str = field(default="phase", init=False)


@dataclass(frozen=True)
class Output:
    """A chunk of the command's stdout or stderr, sent as soon as it is read."""

    key: InstanceKey
    stream: Literal["stdout", "stderr"]
    data: str
    kind: str = field(default="output", init=False)


@dataclass(frozen=True)
class Finished:
    """The instance ended. Exactly one per submitted instance, always the last event.

    * ``exit_code`` is the command's exit code (negative: killed by that signal), or None if the
      command never ran.
    * ``error`` is set for an infrastructure failure (resources could not be downloaded, results
      could not be uploaded, the runner died): the instance is not at fault.
    * ``cancelled`` is True when the instance ended because :meth:`Executor.cancel` was called.
    """

    key: InstanceKey
    exit_code: Optional[int]
    error: Optional[str] = None
    cancelled: bool = False
    exec_time_sec: float = 0.0  # time the command ran
    wall_time_sec: float = 0.0  # time from the runner start to its end
    peak_memory_mb: int = 0
    results_uploaded: int = 0  # number of result files uploaded
    kind: str = field(default="finished", init=False)


ExecutorEvent = Union[Phase, Output, Finished]
_EVENT_TYPES = {"phase": Phase, "output": Output, "finished": Finished}


def event_to_json(event: ExecutorEvent) -> str:
    return json.dumps(asdict(event))


def event_from_json(line: str) -> ExecutorEvent:
    data = json.loads(line)
    cls = _EVENT_TYPES[data.pop("kind")]
    data["key"] = InstanceKey(**data["key"])
    return cls(**data)


class Executor(abc.ABC):
    """Runs instances and reports events. Implementations: LocalExecutor (this host)."""

    def __init__(self, on_event: Callable[[ExecutorEvent], None]) -> None:
        self.on_event = on_event

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many instances may run at once."""

    @abc.abstractmethod
    def submit(self, spec: InstanceSpec) -> None:
        """Start running an instance. Must not block on the instance itself."""

    @abc.abstractmethod
    def cancel(self, key: InstanceKey) -> None:
        """Stop an instance: SIGTERM to its process tree, SIGKILL after the grace period.

        A Finished event with ``cancelled=True`` follows. Unknown keys are ignored.
        """

    @abc.abstractmethod
    def running(self) -> set[InstanceKey]:
        """The instances this executor is running now."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop every instance (as cancel) and release resources. No events after it returns."""
