"""Tasks: a command run as one or many instances, with resource and result buckets."""
from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from . import _resource
from ._fields import Field, parse_datetime, parse_enum
from ._resource import OutputMethods, Resource
from ._running import RunMethods
from ._wire import (
    ResourcesField,
    ResultsField,
    as_bucket,
    bucket_list,
    dump_constants,
    hardware_field,
    instance_of,
    nonempty_name,
    optional_bool,
    optional_count,
    optional_str,
    parse_constants,
    str_dict,
    str_list,
    timespan,
    uuid_of,
    value_field,
)
from .bucket import Bucket, Progress
from .dependencies import Dependencies, DependencyMethods
from .explain import ExplainMethods
from .exceptions import (
    FieldError,
    MissingBucketException,
    MissingTaskException,
    MissingTaskInstanceException,
)
from .hardware import HardwareConstraint
from .options import Privileges, RetrySettings, SecretsAccessRights
from .snapshot import SnapshotMethods
from .states import TaskState
from .status import CompletedInstance, Error, Status

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Task"]

logger = logging.getLogger(__name__)

# wait(): poll GET /tasks/{uuid} every 0.05 s, then 1.5 times longer each time, at most 1 s.
POLL_START = _resource.POLL_START
POLL_FACTOR = _resource.POLL_FACTOR
POLL_MAX = _resource.POLL_MAX
_sleep: Callable[[float], None] = time.sleep  # patched by tests
_REPRESENTATION = {"Prefer": "return=representation"}  # RFC 7240: the POST reply holds the doc


def _check_instancecount(owner: "Task", value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(f"instancecount must be an int >= 0, got {value!r}")
    if value and owner.advanced_range is not None:
        raise FieldError("instancecount cannot be set while advanced_range is set")
    return value


def _check_advanced_range(owner: "Task", value: Any) -> Optional[str]:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise FieldError(f"advanced_range must be a range string like '0-9,12', got {value!r}")
    if value is not None and owner.instancecount != 0:
        raise FieldError("advanced_range can only be set while instancecount is 0")
    return value


# Keys always present in the POST /tasks document, even when null or empty.
_ALWAYS_SENT = frozenset({"name", "profile", "poolUuid", "jobUuid", "constants", "tags",
                          "labels", "advancedResourceBuckets"})


class Task(RunMethods, OutputMethods, DependencyMethods, SnapshotMethods, ExplainMethods,
           Resource):
    """A task: ``instancecount`` instances (or an ``advanced_range`` of instance ids) of a profile,
    or run in a pool.

    Before :meth:`submit` every writable field can be set. Once submitted, ``name``, ``tags``
    and ``labels`` stay writable and are sent by :meth:`commit`; the other fields (``constants``
    among them: the instances already run with them) are fixed, and setting one raises
    :class:`~qcompute.ReadOnlyFieldError` naming it.

    Cached fields come from the last ``GET /tasks/{uuid}``. Volatile fields (``state``,
    ``previous_state``, ``status``, ``progress``, ``completed_instances``, ``errors``,
    ``end_date``, ``execution_time``, ``wall_time``, ``running_*``, ``results_count``,
    ``snapshot_interval``) refresh the task when its data is older than ``update_cache_time``
    (5 s) while ``auto_update`` is on. Refreshes keep local edits.

    Args:
        connection: the owning connection.
        name: a display name.
        profile_or_pool: a profile name, or a pool (an object with ``uuid``) to run in.
        instancecount_or_range: an instance count, or a range string such as ``"0-9,12"``.
        shortname: a unique DNS-compliant name (the server uses the uuid otherwise).
        job: a job (an object with ``uuid``) or a job uuid.
        pool: a pool (an object with ``uuid``) or a pool uuid; a task in a pool has no profile.

    Raises:
        ValueError: both a profile and a pool, or a pool other than the job's.
    """

    __slots__ = ("_pending_snapshot",)
    _path = "tasks"
    _not_found = MissingTaskException
    _instance_not_found = MissingTaskInstanceException
    _repr_fields = ("uuid", "name", "state")

    name: Field[str] = Field("name", validate=lambda o, v: nonempty_name(v),
                             doc='The display name.')
    shortname: Field[Optional[str]] = Field("shortname", fixed_after_submit=True,
                                            validate=optional_str,
                                            doc='A unique DNS-compliant name (the server uses the'
                                                ' uuid when unset).')
    profile: Field[Optional[str]] = Field("profile", fixed_after_submit=True,
                                          validate=optional_str,
                                          doc='The profile that runs the instances (None for a '
                                              'task in a pool).')
    pool_uuid: Field[Optional[str]] = Field("poolUuid", fixed_after_submit=True,
                                            validate=optional_str,
                                            doc='The pool the task runs in, if any.')
    job_uuid: Field[Optional[str]] = Field("jobUuid", fixed_after_submit=True,
                                           validate=optional_str,
                                           doc='The job the task belongs to, if any.')
    instancecount: Field[int] = Field("instanceCount", fixed_after_submit=True, default=0,
                                      validate=_check_instancecount,
                                      doc='How many instances to run (0 when ``advanced_range`` '
                                          'is set).')
    advanced_range: Field[Optional[str]] = Field("advancedRanges", fixed_after_submit=True,
                                                 validate=_check_advanced_range,
                                                 doc='The instance ids to run, as a range string '
                                                     "such as ``'0-9,12'``.")
    constants: Field[dict[str, Optional[str]]] = Field(
        "constants", fixed_after_submit=True, parse=parse_constants, dump=dump_constants,
        default=dict, validate=str_dict,
        doc='Environment variables of every instance (a dict of str).')
    tags: Field[list[str]] = Field("tags", default=list, validate=str_list,
                                   doc='Free tags, for filtering lists.')
    labels: Field[dict[str, str]] = Field("labels", default=dict, validate=str_dict,
                                          doc='Key/value labels, for filtering lists.')
    resources: Field[list[Bucket]] = ResourcesField(
        "advancedResourceBuckets", fixed_after_submit=True, validate=bucket_list,
        doc="The buckets mounted as the instances' input (a list of Bucket).")
    results: Field[Optional[Bucket]] = ResultsField(
        "resultBucket", fixed_after_submit=True,
        validate=lambda o, v: None if v is None else as_bucket(o, v),
        doc='The bucket that receives the results, or None.')
    results_whitelist: Field[Optional[str]] = Field("resultsWhitelist", fixed_after_submit=True,
                                                    validate=optional_str,
                                                    doc='A regex: only matching result files are '
                                                        'uploaded.')
    results_blacklist: Field[Optional[str]] = Field("resultsBlacklist", fixed_after_submit=True,
                                                    validate=optional_str,
                                                    doc='A regex: matching result files are not '
                                                        'uploaded.')
    snapshot_whitelist: Field[Optional[str]] = Field(
        "snapshotWhitelist", fixed_after_submit=True, validate=optional_str,
        doc='A regex: only matching files go into snapshots.')
    snapshot_blacklist: Field[Optional[str]] = Field(
        "snapshotBlacklist", fixed_after_submit=True, validate=optional_str,
        doc='A regex: matching files are left out of snapshots.')
    dependencies: Field[Dependencies] = value_field(Dependencies, "dependencies",
                                                    fixed_after_submit=True,
                                                    doc='The tasks this one waits for (see '
                                                        '``set_task_dependencies_from_tasks``).')
    retry_settings: Field[RetrySettings] = value_field(RetrySettings, "retrySettings",
                                                       fixed_after_submit=True,
                                                       doc='How often a failed instance is '
                                                           'retried (a RetrySettings).')
    secrets_access_rights: Field[SecretsAccessRights] = value_field(
        SecretsAccessRights, "secretsAccessRights", fixed_after_submit=True,
        doc='Which secrets the instances may read (a SecretsAccessRights).')
    privileges: Field[Privileges] = value_field(Privileges, "privileges", fixed_after_submit=True,
                                                doc='Extra rights of the instances, e.g. the '
                                                    'exported credentials (Privileges).')
    hardware_constraints: Field[list[HardwareConstraint]] = hardware_field(
        "hardwareConstraints", fixed_after_submit=True,
        doc='Constraints on the nodes that may run the instances.')
    max_time_queue_seconds: Field[Optional[int]] = Field(
        "maxTimeQueueSeconds", fixed_after_submit=True, validate=optional_count,
        doc='Cancel the task if it stays queued longer than this.')
    upload_results_on_cancellation: Field[Optional[bool]] = Field(
        "uploadResultsOnCancellation", fixed_after_submit=True, validate=optional_bool,
        doc='Upload the results of cancelled instances too.')
    wait_for_pool_resources_synchronization: Field[Optional[bool]] = Field(
        "waitForPoolResourcesSynchronization", fixed_after_submit=True, validate=optional_bool,
        doc="In a pool: wait for the pool's resources to be synchronised first.")
    default_resources_cache_ttl_sec: Field[Optional[int]] = Field(
        "defaultResourcesCacheTTLSec", fixed_after_submit=True, validate=optional_count,
        doc='Seconds the resource buckets stay cached on the nodes.')
    auto_delete: Field[bool] = Field("autoDeleteOnCompletion", fixed_after_submit=True,
                                     default=False, validate=instance_of(bool, optional=False),
                                     doc='Delete the task once it is final and its '
                                         '``completion_ttl`` passed.')
    completion_ttl = timespan("completionTimeToLive", fixed_after_submit=True,
                              doc='How long a final task is kept with ``auto_delete`` (a '
                                  'timedelta).')

    state: Field[Union[TaskState, str]] = Field(
        "state", volatile=True, parse=parse_enum(TaskState), default=TaskState.UNSUBMITTED,
        doc='Where the task is: Submitted, Queued, FullyExecuting, Success, Failure, ...')
    previous_state: Field[Union[TaskState, str, None]] = Field(
        "previousState", volatile=True, parse=parse_enum(TaskState),
        doc='The state before the current one.')
    status: Field[Optional[Status]] = Field("status", volatile=True, parse=Status.from_json,
                                            doc='Live figures: progress, times, running instances'
                                                ' (a Status).')
    progress: Field[Optional[float]] = Field("progress", volatile=True, parse=float,
                                             doc='Percent of the work done, 0 to 100.')
    completed_instances: Field[list[CompletedInstance]] = Field(
        "completedInstances", volatile=True, default=list,
        parse=lambda raw: [CompletedInstance.from_json(doc) for doc in raw],
        doc='The instances that ended, with their state and times.')
    errors: Field[list[Error]] = Field(
        "errors", volatile=True, default=list,
        parse=lambda raw: [e for e in (Error.from_json(doc) for doc in raw) if e is not None],
        doc='Why the task failed (a list of Error), empty otherwise.')
    creation_date = Field("creationDate", read_only=True, parse=parse_datetime,
                          doc='When the task was accepted (an aware UTC datetime).')
    end_date = Field("endDate", volatile=True, parse=parse_datetime,
                     doc='When the task became final.')
    execution_time: Field[Optional[str]] = Field("executionTime", volatile=True,
                                                 doc='CPU time used so far (``d.hh:mm:ss``).')
    wall_time: Field[Optional[str]] = Field("wallTime", volatile=True,
                                            doc='Wall time so far (``d.hh:mm:ss``).')
    running_instance_count: Field[Optional[int]] = Field("runningInstanceCount", volatile=True,
                                                         doc='How many instances run now.')
    running_core_count: Field[Optional[int]] = Field("runningCoreCount", volatile=True,
                                                     doc='How many cores run now.')
    results_count: Field[Optional[int]] = Field("resultsCount", volatile=True,
                                                doc='How many result files were uploaded.')
    snapshot_interval: Field[Optional[int]] = Field("snapshotInterval", volatile=True,
                                                    doc='Seconds between periodic snapshots (0: '
                                                        'none).')

    def __init__(
        self,
        connection: "Connection",
        name: str,
        profile_or_pool: Any = None,
        instancecount_or_range: Union[int, str] = 1,
        shortname: Optional[str] = None,
        job: Any = None,
        *,
        pool: Any = None,
    ) -> None:
        super().__init__(connection)
        self._pending_snapshot = None
        data: dict[str, Any] = {"name": nonempty_name(name), "profile": None,
                                "poolUuid": None, "jobUuid": None}
        if profile_or_pool is None or isinstance(profile_or_pool, str):
            data["profile"] = profile_or_pool
        else:
            data["poolUuid"] = uuid_of(profile_or_pool, "profile_or_pool")
        if pool is not None:
            if profile_or_pool is not None:
                raise ValueError("a task runs with a profile or in a pool, not both (a task "
                                 "in a pool has no profile)")
            data["poolUuid"] = uuid_of(pool, "pool")
        if isinstance(instancecount_or_range, bool) or not isinstance(
                instancecount_or_range, (int, str)):
            raise TypeError("instancecount_or_range must be an int or a range string, got "
                            f"{instancecount_or_range!r}")
        if isinstance(instancecount_or_range, int):
            if instancecount_or_range < 0:
                raise ValueError(f"instance count must be >= 0, got {instancecount_or_range}")
            data["instanceCount"] = instancecount_or_range
        else:
            data["instanceCount"] = 0
            data["advancedRanges"] = instancecount_or_range
        if shortname is not None:
            data["shortname"] = optional_str(self, shortname)
        if job is not None:
            data["jobUuid"] = uuid_of(job, "job")
            job_pool = job._data.get("poolUuid") if isinstance(job, Resource) else None
            if job_pool and data["poolUuid"] not in (None, job_pool):
                raise ValueError(f"job {data['jobUuid']} runs in pool {job_pool}, not in pool "
                                 f"{data['poolUuid']}")
        self._data.update(data)

    def allow_credentials_to_be_exported_to_task_environment(self) -> None:
        """Let the payload receive the API and storage credentials in its environment
        (``privileges.exportApiAndStorageCredentialsInEnvironment``; before submit only)."""
        self.privileges = Privileges(export_credentials_in_environment=True)

    # -- submission ------------------------------------------------------------------------
    def _submit_document(self) -> dict[str, Any]:
        """The ``POST /tasks`` document (reference §1.5): what was set, and the keys the
        dialect always sends."""
        doc = self._input_document(_ALWAYS_SENT)
        if doc.get("advancedRanges"):
            doc.pop("instanceCount", None)
        results = self.results
        if results is not None and results.cache_ttl_sec is not None:
            doc["ResultsCacheTTLSec"] = results.cache_ttl_sec
        return doc

    def _submitted(self, reply: dict[str, Any]) -> None:
        """The server accepted the task: load the document its reply holds (qcompute's server
        sends it, asked by ``Prefer: return=representation``), or GET it; a pending periodic
        snapshot is sent first, and the document read after it."""
        self._data["uuid"] = str(reply["uuid"])
        if self._send_pending_snapshot() or "state" not in reply:
            reply = self._conn._http.get(self._url(), not_found=MissingTaskException)
        self._load(reply, now=_resource._clock(), keep_changes=False)

    def _accepted(self, uuid: str, sent: dict[str, Any]) -> None:
        """Accepted in a bulk submit: keep the document sent, with no GET. It is partial and
        stale, so the first read of a server field (state, status, ...) fetches the task."""
        self._load({**sent, "uuid": uuid, "state": TaskState.SUBMITTED.value}, partial=True,
                   now=None, keep_changes=False)
        self._send_pending_snapshot()

    def submit(self) -> "Task":
        """Submit the task: ``POST /tasks``, whose reply holds the task's document on a qcompute
        cluster; elsewhere, or after ``POST /tasks/{uuid}/snapshot/periodic`` when
        :meth:`snapshot` was called before, ``GET /tasks/{uuid}`` then.

        Returns:
            self, loaded with the server's document.

        Raises:
            ResourceStateError: already submitted.
            MissingBucketException: the server answered 404 (a bucket it needs is missing).
            BadRequestError: the server refused the document (its message says why).
        """
        self._submitted(self._post_new("/tasks", MissingBucketException, _REPRESENTATION))
        return self

    # -- waiting -----------------------------------------------------------------------------
    def _is_final(self) -> bool:
        state = self._state_now()
        return isinstance(state, TaskState) and state.is_final()

    # -- actions -----------------------------------------------------------------------------
    def abort(self) -> "Task":
        """Cancel the task: ``POST /tasks/{uuid}/abort``, then refresh."""
        self._require_submitted("abort")
        self._conn._http.post(self._url("abort"), not_found=MissingTaskException)
        self.update(flushcache=True)
        return self

    def update_resources(self) -> "Task":
        """Make running instances pull their resource buckets again: ``PATCH /tasks/{uuid}``."""
        self._require_submitted("update resources")
        self._conn._http.patch(self._url(), not_found=MissingTaskException)
        self.update(flushcache=True)
        return self

    def delete(self, purge_resources: bool = False, purge_results: bool = False) -> None:
        """Delete the task (``DELETE /tasks/{uuid}``), then its buckets if asked.

        Purging deletes every object of the bucket, then the bucket. The task object stays
        usable for its cached fields; ``auto_update`` is turned off.
        """
        self._require_submitted("delete")
        resources = list(self.resources) if purge_resources else []
        results = self.results if purge_results else None
        self._conn._http.delete(self._url(), not_found=MissingTaskException)
        self.auto_update = False
        self._mark_local_state(TaskState.PENDING_DELETE.value)
        for bucket in resources + ([results] if results is not None else []):
            try:
                bucket.delete()
            except MissingBucketException:
                logger.debug("bucket %s was already gone", bucket.name)

    def timeline(self) -> dict[str, Any]:
        """Where the task's time went, from the cluster's own clocks: when it was accepted, and
        when each instance's current attempt reached each step. ``GET /tasks/{uuid}/timeline``,
        a qcompute cluster's own route (Qarnot's cloud has none).

        Returns:
            ``{"uuid", "submitted", "instances": [{"instanceId", "attempt", "state",
            "timeline"}]}``. Times are epoch seconds (floats). ``submitted`` is when the
            task was accepted (its ``creation_date``); each ``timeline`` holds, in this order,
            the steps its attempt reached: ``dispatched``, ``handedOver`` (to the executor),
            ``runnerStarted``, ``commandStarted``, ``sandboxReady`` (sandboxed instances),
            ``commandEnded``, ``resultsUploaded``, ``runnerEnded`` and ``ended`` (recorded by
            the server). An instance in flight has only ``dispatched`` so far.

        Raises:
            ResourceStateError: the task was not submitted.
            MissingTaskException: no such task (or not yours).
        """
        self._require_submitted("read the timeline")
        return self._conn._http.get(self._url("timeline"), not_found=MissingTaskException)

    def download_results(self, output_dir: str, progress: Progress = None) -> str:
        """Download the whole result bucket into ``output_dir`` (created if needed).

        Refreshes the task first when it was submitted. A task without a result bucket
        downloads nothing. Files already in ``output_dir`` with the same content are kept, so
        calling it again (or after :meth:`run`) moves only what changed; see
        :meth:`~qcompute.bucket.Bucket.get_all_files`.

        Args:
            output_dir: the local directory.
            progress: ``True`` for tqdm bars, or a callable ``progress(read, total, filename)``
                called as bytes arrive (see :mod:`qcompute.bucket`).

        Returns:
            ``output_dir``.
        """
        self.update(flushcache=True)
        results = self.results
        os.makedirs(output_dir, exist_ok=True)
        if results is None:
            logger.info("task %s has no result bucket: nothing to download", self.uuid)
            return output_dir
        results.get_all_files(output_dir, progress=progress)
        return output_dir
