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
    ConfigError,
    ConflictError,
    FieldError,
    MissingBucketException,
    MissingJobException,
    MissingPoolException,
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
    ServerError,
    StorageError,
    TransportError,
    UnauthorizedException,
    WaitTimeout,
)
from .states import InstanceState, TaskState

# The client classes are imported on first use (PEP 562): ``python -m qcompute...`` entry
# points (the CLI, the cluster's instance runner) then start without loading requests.
_LAZY = {
    "Bucket": ".bucket", "ObjectInfo": ".bucket", "Config": ".config",
    "Connection": ".connection", "Profile": ".connection", "UserInfo": ".connection",
    "ALL": ".connection", "ANY": ".connection",
    "CompletedInstance": ".status", "Error": ".status", "Status": ".status", "Task": ".task",
}

if TYPE_CHECKING:
    from .bucket import Bucket, ObjectInfo
    from .config import Config
    from .connection import ALL, ANY, Connection, Profile, UserInfo
    from .status import CompletedInstance, Error, Status
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
    "Bucket",
    "ObjectInfo",
    "TaskState",
    "InstanceState",
    "Status",
    "CompletedInstance",
    "Error",
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
    "MissingJobException",
    "ConflictError",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "ConfigError",
    "StorageError",
    "ResourceStateError",
    "WaitTimeout",
    "FieldError",
    "ReadOnlyFieldError",
]
