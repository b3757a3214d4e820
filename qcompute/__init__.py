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

from ._version import __version__
from .bucket import Bucket, ObjectInfo
from .config import Config
from .connection import Connection, Profile, UserInfo
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
from .status import CompletedInstance, Error, Status
from .task import Task

__all__ = [
    "__version__",
    "Connection",
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
