"""State names of the Qarnot dialect, shared by the SDK and the server.

All enums are ``str`` enums, so ``TaskState.SUCCESS == "Success"`` holds and values go on the
wire unchanged.
"""
from __future__ import annotations

from enum import Enum

__all__ = ["TaskState", "InstanceState", "PoolState", "JobState", "SnapshotState"]


class _State(str, Enum):
    """A state name: prints as its wire value."""

    def __str__(self) -> str:
        return self.value


class TaskState(_State):
    """The state of a task, as the API reports it (``task.state``)."""

    UNSUBMITTED = "UnSubmitted"  # local only: the task was never sent
    SUBMITTED = "Submitted"
    PARTIALLY_DISPATCHED = "PartiallyDispatched"
    FULLY_DISPATCHED = "FullyDispatched"
    PARTIALLY_EXECUTING = "PartiallyExecuting"
    FULLY_EXECUTING = "FullyExecuting"
    UPLOADING_RESULTS = "UploadingResults"
    DOWNLOADING_RESULTS = "DownloadingResults"  # legacy name of UploadingResults
    PENDING_CANCEL = "PendingCancel"
    PENDING_DELETE = "PendingDelete"
    SUCCESS = "Success"
    FAILURE = "Failure"
    CANCELLED = "Cancelled"

    def is_final(self) -> bool:
        """True for Success, Failure and Cancelled: the task will not change any more."""
        return self in _FINAL_TASK_STATES


_FINAL_TASK_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.CANCELLED})


class InstanceState(_State):
    """The state of one instance of a task: what the scheduler and the executor really track."""

    QUEUED = "Queued"
    DISPATCHED = "Dispatched"
    DOWNLOADING = "Downloading"
    RUNNING = "Running"
    UPLOADING = "Uploading"
    SUCCEEDED = "Success"
    FAILED = "Failure"
    CANCELLED = "Cancelled"

    def is_final(self) -> bool:
        return self in _FINAL_INSTANCE_STATES

    def is_active(self) -> bool:
        """Handed to an executor and not finished yet."""
        return self in _ACTIVE_INSTANCE_STATES


_FINAL_INSTANCE_STATES = frozenset(
    {InstanceState.SUCCEEDED, InstanceState.FAILED, InstanceState.CANCELLED}
)
_ACTIVE_INSTANCE_STATES = frozenset(
    {InstanceState.DISPATCHED, InstanceState.DOWNLOADING, InstanceState.RUNNING,
     InstanceState.UPLOADING}
)


class PoolState(_State):
    """The state of a pool (``pool.state``)."""

    UNSUBMITTED = "UnSubmitted"  # local only: the pool was never sent
    SUBMITTED = "Submitted"
    PARTIALLY_DISPATCHED = "PartiallyDispatched"
    FULLY_DISPATCHED = "FullyDispatched"
    PARTIALLY_EXECUTING = "PartiallyExecuting"
    FULLY_EXECUTING = "FullyExecuting"
    CLOSING = "Closing"
    CLOSED = "Closed"
    FAILURE = "Failure"
    PENDING_DELETE = "PendingDelete"

    def is_final(self) -> bool:
        """True for Closed and Failure: the pool will not change any more."""
        return self in _FINAL_POOL_STATES


_FINAL_POOL_STATES = frozenset({PoolState.CLOSED, PoolState.FAILURE})


class JobState(_State):
    """The state of a job (``job.state``)."""

    UNSUBMITTED = "UnSubmitted"  # local only: the job was never sent
    ACTIVE = "Active"
    TERMINATING = "Terminating"
    COMPLETED = "Completed"
    DELETING = "Deleting"

    def is_final(self) -> bool:
        """True for Completed: every task of the job is final and none can be added."""
        return self is JobState.COMPLETED


class SnapshotState(_State):
    """The state of one snapshot of a task (``Snapshot.status``)."""

    TRIGGERED = "Triggered"
    IN_PROGRESS = "InProgress"
    SUCCESS = "Success"
    FAILURE = "Failure"

    def is_final(self) -> bool:
        return self in (SnapshotState.SUCCESS, SnapshotState.FAILURE)

