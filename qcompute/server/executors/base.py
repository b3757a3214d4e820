"""The executor seam: what the scheduler hands to an executor, and the events it gets back.

Executors move instances, nothing else. They know nothing about HTTP or SQL. The scheduler calls
:meth:`Executor.submit` for an instance it has marked dispatched (and committed), and
:meth:`Executor.cancel` on abort. A running instance can also be asked to upload its results
now (:meth:`Executor.snapshot`), to change its periodic snapshot
(:meth:`Executor.set_periodic_snapshot`) or to download its resources again
(:meth:`Executor.refresh_resources`). The slots open pools hold are handed over as a whole
(:meth:`Executor.hold_pool_slots`), for an executor that reserves capacity for them; and an
instance handed over but not yet on a node can say what it waits for (:meth:`Executor.waiting`). Everything the executor learns flows back as events through
the ``on_event`` callback given at construction; the callback is thread-safe and never blocks for
long.

Events are plain dataclasses, also serialised as JSON lines between the runner process and the
local executor (see :func:`event_to_json` / :func:`event_from_json`).
"""
from __future__ import annotations

import abc
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Optional, Union

log = logging.getLogger(__name__)

__all__ = [
    "S3Access", "ResourceSpec", "SnapshotRequest", "InstanceSpec", "InstanceKey", "PoolSlots",
    "Phase", "Placed", "Output", "Telemetry", "SnapshotDone", "ResourcesRefreshed", "Finished",
    "ExecutorEvent",
    "Executor",
    "event_to_json", "event_from_json", "storable",
]

ERROR_MAX_CHARS = 4000  # an event's error, as the scheduler stores it


def storable(text: Optional[str], limit: int = ERROR_MAX_CHARS) -> Optional[str]:
    """``text`` as any SQL database stores it: valid UTF-8 (bytes of a file name that are not
    UTF-8 shown as ``\\xNN``, other characters that cannot be encoded as ``\\uNNNN``), no NUL,
    at most ``limit`` characters (a cut ends with "…")."""
    if text is None:
        return None
    try:  # a file name read by os.walk carries its non-UTF-8 bytes as surrogates
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _store_errors(event: object, *names: str) -> None:
    """Make the named string fields of a frozen event storable (see :func:`storable`)."""
    for name in names:
        object.__setattr__(event, name, storable(getattr(event, name)))


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
class SnapshotRequest:
    """Upload the instance's current results (files changed since its last upload there)."""

    snapshot_id: str  # reported back in SnapshotDone
    bucket: str
    prefix: str = ""  # key prefix in the bucket
    whitelist: Optional[str] = None  # regex on the relative POSIX path
    blacklist: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> Optional["SnapshotRequest"]:
        return cls(**data) if data else None


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
    command: str  # ${NAME} filled in from env, split into words, run without a shell
    env: dict[str, str]  # constants, INSTANCE_ID, FRAME_ID, INSTANCE_COUNT, QRANK, QSIZE, ...
    workdir: str  # a fresh directory the runner creates, and removes once results are stored
    s3: Optional[S3Access] = None
    resources: tuple[ResourceSpec, ...] = ()
    result_bucket: Optional[str] = None
    results_prefix: str = ""  # key prefix for uploaded results (empty: bucket root)
    results_whitelist: Optional[str] = None  # regex on the relative POSIX path
    results_blacklist: Optional[str] = None
    upload_results_on_cancel: bool = False
    kill_grace_seconds: float = 5.0
    snapshot_interval_sec: int = 0  # > 0: the runner uploads periodic_snapshot this often
    periodic_snapshot: Optional[SnapshotRequest] = None
    secret_env: dict[str, str] = field(default_factory=dict)  # exported, never filled in
    network: bool = True  # False: the sandboxed instance gets no network at all
    share_dir: Optional[str] = None  # a pool's directory, seen as /share in the sandbox
    # a failed result upload is tried again (only the files not uploaded yet, with backoff) up
    # to this many tries in all, none starting later than result_upload_seconds after the first
    # failed
    result_upload_attempts: int = 8
    result_upload_seconds: float = 300.0
    # the task's (or its pool's) hardwareConstraints: an executor spanning several node kinds
    # places the instance on a node that meets them
    hardware_constraints: list[dict] = field(default_factory=list)
    pool_uuid: Optional[str] = None  # the pool whose slots it runs in (its task's, or its own)

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
        periodic = SnapshotRequest.from_dict(data.pop("periodic_snapshot", None))
        return cls(s3=s3, resources=resources, periodic_snapshot=periodic, **data)


@dataclass(frozen=True)
class PoolSlots:
    """The slots an open pool holds (slot numbers), and the hardware constraints they meet."""

    slots: frozenset[int]
    hardware_constraints: list[dict] = field(default_factory=list, hash=False)


PhaseName = Literal["downloading", "running", "uploading"]


@dataclass(frozen=True)
class Phase:
    """The instance entered a phase. ``running`` means the command's process has started."""

    key: InstanceKey
    phase: PhaseName
    kind: str = field(default="phase", init=False)


@dataclass(frozen=True)
class Placed:
    """The instance was given to a node (executors spanning several nodes send it first)."""

    key: InstanceKey
    node_id: str
    hostname: str
    placement_group: Optional[str] = None  # the pool's reservation it runs in, if any
    kind: str = field(default="placed", init=False)

    def describe(self) -> dict[str, str]:
        """The node as the instance's status shows it."""
        node = {"id": self.node_id, "hostname": self.hostname}
        if self.placement_group:
            node["placementGroup"] = self.placement_group
        return node


@dataclass(frozen=True)
class Output:
    """A chunk of the command's stdout or stderr, sent as soon as it is read."""

    key: InstanceKey
    stream: Literal["stdout", "stderr"]
    data: str
    kind: str = field(default="output", init=False)


@dataclass(frozen=True)
class Telemetry:
    """A running instance's resource use, sampled about once a second."""

    key: InstanceKey
    cpu_usage: float  # % of the node's cores
    cpu_seconds: float  # CPU time used so far
    memory_mb: float
    max_memory_mb: float  # peak so far
    memory_limit_mb: float
    network_in_kbps: float
    network_out_kbps: float
    frequency_ghz: float
    max_frequency_ghz: float
    kind: str = field(default="telemetry", init=False)


@dataclass(frozen=True)
class SnapshotDone:
    """One instance's part of a snapshot (an instant one, or a periodic round) is over.

    ``files``/``bytes`` were uploaded out of ``size`` bytes selected; ``keys`` are the first
    uploaded keys (a short list). Never sent after the instance's Finished.
    """

    key: InstanceKey
    snapshot_id: str
    ok: bool
    error: Optional[str] = None
    files: int = 0
    bytes: int = 0
    size: int = 0
    keys: tuple[str, ...] = ()
    kind: str = field(default="snapshot", init=False)

    def __post_init__(self) -> None:
        _store_errors(self, "error")
        object.__setattr__(self, "keys", tuple(storable(key, 1100) for key in self.keys))


@dataclass(frozen=True)
class ResourcesRefreshed:
    """The instance downloaded its resources again (``files`` new or changed ones)."""

    key: InstanceKey
    ok: bool
    error: Optional[str] = None
    files: int = 0
    kind: str = field(default="refreshed", init=False)

    def __post_init__(self) -> None:
        _store_errors(self, "error")


@dataclass(frozen=True)
class Finished:
    """The instance ended. Exactly one per submitted instance, always the last event.

    * ``exit_code`` is the command's exit code (128 + N: killed by signal N, as shells and
      container runtimes report it), or None if the command never ran.
    * ``error`` is set for an infrastructure failure (resources could not be downloaded, results
      could not be uploaded, the runner died): the instance is not at fault.
    * ``results_failed``: the command ran to its end (``exit_code``), but some of its result
      files could not be stored: the upload failed after its retries, or a file's name cannot be
      an S3 key. ``error`` names them. Running the command again would repeat its whole run
      (and its side effects) for files that are still on the node.
    * ``cancelled`` is True when the instance ended because :meth:`Executor.cancel` was called.
    * ``timeline``: when the runner reached each step, in epoch seconds (``time.time()``):
      ``runner_started`` (it took the spec), ``command_started`` (just before it starts the
      command's process), ``sandbox_ready`` (the sandbox's init runs; sandboxed only),
      ``command_ended`` (the command's exit was seen), ``results_uploaded`` (the results step
      is over, whether or not there was anything to upload) and ``runner_ended`` (the working
      directory is removed, this event is built). A step never reached is absent; an end the
      executor synthesises has none.

    ``error`` is always storable (see :func:`storable`).
    """

    key: InstanceKey
    exit_code: Optional[int]
    error: Optional[str] = None
    cancelled: bool = False
    exec_time_sec: float = 0.0  # time the command ran
    wall_time_sec: float = 0.0  # time from the runner start to its end
    peak_memory_mb: int = 0
    results_uploaded: int = 0  # number of result files uploaded
    results_failed: bool = False
    timeline: dict[str, float] = field(default_factory=dict, hash=False)
    kind: str = field(default="finished", init=False)

    def __post_init__(self) -> None:
        _store_errors(self, "error")


ExecutorEvent = Union[Phase, Placed, Output, Telemetry, SnapshotDone, ResourcesRefreshed,
                      Finished]
_EVENT_TYPES = {"phase": Phase, "placed": Placed, "output": Output, "telemetry": Telemetry,
                "snapshot": SnapshotDone,
                "refreshed": ResourcesRefreshed, "finished": Finished}


def event_to_json(event: ExecutorEvent) -> str:
    return json.dumps(asdict(event))


def event_from_json(line: str) -> ExecutorEvent:
    data = json.loads(line)
    cls = _EVENT_TYPES[data.pop("kind")]
    data["key"] = InstanceKey(**data["key"])
    if "keys" in data:
        data["keys"] = tuple(data["keys"])
    return cls(**data)


class ControlMessages:
    """``snapshot``, ``set_periodic_snapshot`` and ``refresh_resources`` as control messages
    (``{"control": kind, ...}``, JSON-ready) handed to ``_control``, for executors whose
    instances run in another process; the runner posts them with ``InstanceControl.apply``."""

    def _control(self, key: InstanceKey, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self, key: InstanceKey, request: SnapshotRequest) -> None:
        self._control(key, {"control": "snapshot", "request": asdict(request)})

    def set_periodic_snapshot(self, key: InstanceKey, interval_sec: int,
                              request: Optional[SnapshotRequest]) -> None:
        self._control(key, {"control": "periodic", "interval_sec": interval_sec,
                            "request": asdict(request) if request else None})

    def refresh_resources(self, key: InstanceKey) -> None:
        self._control(key, {"control": "refresh"})


class Executor(abc.ABC):
    """Runs instances and reports events. Implementations: LocalExecutor (this host),
    RayExecutor (the nodes of a Ray cluster, ``executors/ray_executor.py``)."""

    sandboxed = False  # whether every instance runs in a sandbox (qcompute.server.sandbox)
    isolation = "unsandboxed"  # one line for the operator: how instances are isolated

    def __init__(self, on_event: Callable[[ExecutorEvent], None]) -> None:
        self.on_event = on_event
        self._silenced = False  # set by shutdown(): no more events

    def _deliver(self, event: ExecutorEvent) -> None:
        """Hand an event to ``on_event`` (none once silenced); what it raises is logged, never
        raised into the executor's own threads."""
        if self._silenced:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("on_event failed for %r", event)

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
    def snapshot(self, key: InstanceKey, request: SnapshotRequest) -> None:
        """Ask a running instance to upload its results now, without stopping its command.

        A SnapshotDone event follows, unless the instance ends first (its Finished comes
        instead). Raises KeyError if this executor is not running the instance.
        """

    @abc.abstractmethod
    def set_periodic_snapshot(self, key: InstanceKey, interval_sec: int,
                              request: Optional[SnapshotRequest]) -> None:
        """Replace the running instance's periodic snapshot (0 or no request: stop it).
        Raises KeyError if this executor is not running the instance."""

    @abc.abstractmethod
    def refresh_resources(self, key: InstanceKey) -> None:
        """Ask a running instance to download its resources again: new and changed files are
        added, nothing is deleted. A ResourcesRefreshed event follows (unless it ends first).
        Raises KeyError if this executor is not running the instance."""

    @abc.abstractmethod
    def running(self) -> set[InstanceKey]:
        """The instances this executor is running now. A key leaves this set only once its
        Finished has been handed to ``on_event``: the scheduler counts a key missing from it as
        lost (``scheduler_recovery.Recovery``)."""

    def problem(self) -> Optional[str]:
        """Why no instance can start here now, or None (for ``/health``)."""
        return None

    def hold_pool_slots(self, pools: dict[str, PoolSlots]) -> None:
        """The slots every open pool holds now, by pool uuid (a pool missing from it holds
        none: it ended). Called when that changes. An executor that reserves capacity reserves
        these slots for the pool and runs the pool's instances (``InstanceSpec.pool_uuid``) in
        them; one on a single host counts slots only: nothing to do."""

    def waiting(self, key: InstanceKey) -> Optional[dict[str, Any]]:
        """What an instance handed over but not yet given a node waits for (``message``, and
        details for ``GET /tasks/{uuid}/explain``), or None: running, unknown, or an executor
        that starts what it is handed at once."""
        return None

    def describe_nodes(self) -> Optional[list[dict]]:
        """The live nodes with their cores, memory, labels, slots and free slots, for an
        executor spanning several; None for one running on this host alone."""
        return None

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop every instance (as cancel) and release resources. No events after it returns."""
