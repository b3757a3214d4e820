"""qcompute: a Python SDK for clusters speaking the Qarnot REST dialect.

Quick start::

    import qcompute

    with qcompute.Connection(client_token="...", cluster_url="http://127.0.0.1:8801") as conn:
        task = conn.create_task("hello", "docker-batch", 2)
        task.constants["DOCKER_CMD"] = "echo hello $INSTANCE_ID"
        task.run()
        print(task.stdout())

Importing the package does no I/O and does not import boto3 (it is loaded on first S3 use).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .exceptions import (
    APIError,
    BadRequestError,
    BatchError,
    ConfigError,
    ConflictError,
    FieldError,
    MissingBucketException,
    MissingJobException,
    MissingPoolException,
    MissingPoolInstanceException,
    MissingProfileException,
    MissingTaskException,
    MissingTaskInstanceException,
    NotEnoughCreditsException,
    NotFoundError,
    QarnotException,
    QarnotGenericException,
    QComputeError,
    RateLimitedError,
    ReadOnlyFieldError,
    ResourceStateError,
    SecretConflictException,
    SecretNotFoundException,
    ServerError,
    StorageError,
    TransportError,
    UnauthorizedException,
    TaskFailedError,
    WaitTimeout,
)
from .states import InstanceState, JobState, PoolState, SnapshotState, TaskState

_HARDWARE = (
    "HardwareConstraint", "MinimumCoreHardware", "MaximumCoreHardware",
    "MinimumRamCoreRatioHardware", "MaximumRamCoreRatioHardware", "MinimumRamHardware",
    "MaximumRamHardware", "SpecificHardware", "GpuHardware", "NoGpuHardware", "SSDHardware",
    "NoSSDHardware", "CpuModelHardware", "UnknownHardwareConstraint",
)

# The client classes are imported on first use (PEP 562): ``python -m qcompute...`` entry
# points (the CLI, the cluster's instance runner) then start without loading requests.
_LAZY = {
    "Bucket": ".bucket", "ObjectInfo": ".bucket", "Config": ".config",
    "Connection": ".connection", "Profile": ".connection", "UserInfo": ".connection",
    "ALL": ".connection", "ANY": ".connection",
    "CompletedInstance": ".status", "Error": ".status", "Status": ".status",
    "RunningInstance": ".status", "Task": ".task",
    "Pool": ".pool", "ElasticProperty": ".pool", "Job": ".job", "Secrets": ".secrets",
    "Page": "._paging", "Snapshot": ".snapshot", "RetrySettings": ".options",
    "SecretsAccessRights": ".options", "Privileges": ".options",
    "AdvancedDependency": ".dependencies", "Dependencies": ".dependencies",
    "FinalStateCondition": ".dependencies",
    "Explanation": ".explain", "Reason": ".explain",
    **{name: ".hardware" for name in _HARDWARE},
    "load_batch": ".batch", "Batch": ".batch", "BatchRun": ".batch",
}

if TYPE_CHECKING:
    from ._paging import Page
    from .batch import Batch, BatchRun, load_batch
    from .bucket import Bucket, ObjectInfo
    from .config import Config
    from .connection import ALL, ANY, Connection, Profile, UserInfo
    from .dependencies import AdvancedDependency, Dependencies, FinalStateCondition
    from .explain import Explanation, Reason
    from .hardware import (
        CpuModelHardware,
        GpuHardware,
        HardwareConstraint,
        MaximumCoreHardware,
        MaximumRamCoreRatioHardware,
        MaximumRamHardware,
        MinimumCoreHardware,
        MinimumRamCoreRatioHardware,
        MinimumRamHardware,
        NoGpuHardware,
        NoSSDHardware,
        SpecificHardware,
        SSDHardware,
        UnknownHardwareConstraint,
    )
    from .job import Job
    from .options import Privileges, RetrySettings, SecretsAccessRights
    from .pool import ElasticProperty, Pool
    from .secrets import Secrets
    from .snapshot import Snapshot
    from .status import CompletedInstance, Error, RunningInstance, Status
    from .task import Task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qcompute' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

__all__ = [
    "__version__",
    "Connection",
    "ALL",
    "ANY",
    "Config",
    "UserInfo",
    "Profile",
    "Task",
    "Pool",
    "ElasticProperty",
    "Job",
    "Secrets",
    "Page",
    "Snapshot",
    "RetrySettings",
    "SecretsAccessRights",
    "Privileges",
    "AdvancedDependency",
    "Dependencies",
    "FinalStateCondition",
    "HardwareConstraint",
    "MinimumCoreHardware",
    "MaximumCoreHardware",
    "MinimumRamCoreRatioHardware",
    "MaximumRamCoreRatioHardware",
    "MinimumRamHardware",
    "MaximumRamHardware",
    "SpecificHardware",
    "GpuHardware",
    "NoGpuHardware",
    "SSDHardware",
    "NoSSDHardware",
    "CpuModelHardware",
    "UnknownHardwareConstraint",
    "Bucket",
    "ObjectInfo",
    "load_batch",
    "Batch",
    "BatchRun",
    "TaskState",
    "InstanceState",
    "PoolState",
    "JobState",
    "SnapshotState",
    "Status",
    "CompletedInstance",
    "RunningInstance",
    "Error",
    "Explanation",
    "Reason",
    "QComputeError",
    "QarnotException",
    "APIError",
    "QarnotGenericException",
    "BadRequestError",
    "UnauthorizedException",
    "NotEnoughCreditsException",
    "NotFoundError",
    "MissingTaskException",
    "MissingTaskInstanceException",
    "MissingProfileException",
    "MissingBucketException",
    "MissingPoolException",
    "MissingPoolInstanceException",
    "MissingJobException",
    "SecretNotFoundException",
    "ConflictError",
    "SecretConflictException",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "ConfigError",
    "BatchError",
    "StorageError",
    "ResourceStateError",
    "TaskFailedError",
    "WaitTimeout",
    "FieldError",
    "ReadOnlyFieldError",
]
