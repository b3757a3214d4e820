"""Shared constants, document builders and an in-memory S3 stand-in for the unit tests."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from qcompute._storage import ObjectInfo
from qcompute.exceptions import MissingBucketException, StorageError

API = "http://api.test"
S3 = "http://s3.test"
TOKEN = "secret-token-123"
TASK_UUID = "7a3c9e52-0000-4000-8000-000000000001"
POOL_UUID = "7a3c9e52-0000-4000-8000-0000000000b1"
JOB_UUID = "7a3c9e52-0000-4000-8000-0000000000c1"


def body(call: Any) -> Any:
    """The JSON body of a recorded call."""
    return json.loads(call.request.body) if call.request.body else None


def task_doc(uuid: str = TASK_UUID, state: str = "Submitted", **extra: Any) -> dict[str, Any]:
    """A task document as the server sends it (reference §2.1)."""
    doc = {
        "uuid": uuid,
        "name": "hello",
        "shortname": uuid,
        "profile": "docker-batch",
        "poolUuid": None,
        "jobUuid": None,
        "instanceCount": 2,
        "state": state,
        "previousState": None,
        "creationDate": "2026-11-21T10:00:00.123456Z",
        "constants": [{"key": "DOCKER_CMD", "value": "echo hi"}],
        "tags": ["a"],
        "labels": {},
        "advancedResourceBuckets": [],
        "resultBucket": None,
        "progress": 0.0,
        "status": None,
        "completedInstances": [],
        "errors": [],
        "resultsCount": 0,
    }
    doc.update(extra)
    return doc


def pool_doc(uuid: str = POOL_UUID, state: str = "Submitted", **extra: Any) -> dict[str, Any]:
    """A pool document as the server sends it (reference §2.3)."""
    doc = {
        "uuid": uuid, "name": "render-pool", "shortname": uuid, "profile": "docker-batch",
        "instanceCount": 2, "state": state, "previousState": None,
        "creationDate": "2026-11-21T10:00:00Z", "constants": [], "tags": ["p"], "labels": {},
        "advancedResourceBuckets": None, "preparationTask": None,
        "autoDeleteOnCompletion": False, "completionTimeToLive": "00:00:00",
        "elasticProperty": {"isElastic": False, "minTotalSlots": 0, "maxTotalSlots": 0,
                            "minIdleSlots": 0, "resizePeriod": 90, "rampResizeFactor": 1,
                            "minIdleTimeSeconds": 0},
        "taskDefaultWaitForPoolResourcesSynchronization": False,
        "runningInstanceCount": 0, "runningCoreCount": 0, "poolUsage": 0.0,
        "totalSlotCapacity": 2, "queuedOrRunningTaskInstancesCount": 0.0,
        "status": None, "errors": [],
    }
    doc.update(extra)
    return doc


def job_doc(uuid: str = JOB_UUID, state: str = "Active", **extra: Any) -> dict[str, Any]:
    """A job document as the server sends it (reference §2.4)."""
    doc = {
        "uuid": uuid, "name": "pipeline", "shortname": uuid, "poolUuid": None,
        "state": state, "previousState": None, "useDependencies": True,
        "maxWallTime": "1.03:16:50.5000000", "tags": ["j"], "autoDeleteOnCompletion": False,
        "completionTimeToLive": "00:00:00", "creationDate": "2026-11-21T10:00:00Z",
        "lastModified": "2026-11-21T10:00:01Z",
    }
    doc.update(extra)
    return doc


# ---------------------------------------------------------------------------- fake storage
def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class FakeStorage:
    """In-memory implementation of the Storage methods Bucket uses; records every call."""

    buckets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    chunk: int = 4

    def _bucket(self, bucket: str) -> dict[str, bytes]:
        if bucket not in self.buckets:
            raise MissingBucketException(f"bucket {bucket!r} not found", status_code=404)
        return self.buckets[bucket]

    def create_bucket(self, bucket: str) -> None:
        self.calls.append(("create_bucket", bucket))
        self.buckets.setdefault(bucket, {})

    def head_bucket(self, bucket: str) -> None:
        self.calls.append(("head_bucket", bucket))
        self._bucket(bucket)

    def list_buckets(self) -> list[str]:
        self.calls.append(("list_buckets",))
        return sorted(self.buckets)

    def delete_bucket(self, bucket: str) -> None:
        self.calls.append(("delete_bucket", bucket))
        if self._bucket(bucket):
            raise StorageError("BucketNotEmpty", code="BucketNotEmpty")
        del self.buckets[bucket]

    def list_objects(self, bucket: str, prefix: str = "") -> Any:
        self.calls.append(("list_objects", bucket, prefix))
        for key, data in sorted(self._bucket(bucket).items()):
            if key.startswith(prefix):
                yield ObjectInfo(key, _md5(data), len(data))

    def head_object(self, bucket: str, key: str) -> ObjectInfo:
        self.calls.append(("head_object", bucket, key))
        data = self._bucket(bucket)[key]
        return ObjectInfo(key, _md5(data), len(data))

    def _feed(self, data: bytes, callback: Optional[Callable[[int], None]]) -> None:
        if callback is not None:
            for start in range(0, len(data), self.chunk):
                callback(len(data[start:start + self.chunk]))

    @contextlib.contextmanager
    def transfer_manager(self) -> Any:
        yield None

    def close(self) -> None:
        self.calls.append(("close",))

    def upload_file(self, bucket: str, key: str, path: str, callback: Any = None,
                    manager: Any = None) -> None:
        self.calls.append(("upload_file", bucket, key))
        with open(path, "rb") as handle:
            data = handle.read()
        self._bucket(bucket)[key] = data
        self._feed(data, callback)

    def put_file(self, bucket: str, key: str, path: str, size: int, callback: Any = None) -> str:
        self.calls.append(("put_file", bucket, key))
        with open(path, "rb") as handle:
            data = handle.read()
        self._bucket(bucket)[key] = data
        if callback is not None:
            callback(len(data))
        return _md5(data)

    def copy_object(self, bucket: str, source: str, key: str, if_match: Any = None) -> str:
        self.calls.append(("copy_object", bucket, source, key))
        objects = self._bucket(bucket)
        if source not in objects:
            raise StorageError(f"no object {source!r}", code="NoSuchKey")
        if if_match is not None and if_match != _md5(objects[source]):
            raise StorageError("PreconditionFailed", code="PreconditionFailed")
        objects[key] = objects[source]
        return _md5(objects[key])

    def upload_fileobj(self, bucket: str, key: str, fileobj: io.BufferedIOBase,
                       callback: Any = None) -> None:
        self.calls.append(("upload_fileobj", bucket, key))
        self._bucket(bucket)[key] = fileobj.read()

    def put_bytes(self, bucket: str, key: str, data: bytes) -> str:
        self.calls.append(("put_bytes", bucket, key))
        self._bucket(bucket)[key] = data
        return _md5(data)

    def download_file(self, bucket: str, key: str, path: str, callback: Any = None,
                      manager: Any = None) -> None:
        self.calls.append(("download_file", bucket, key))
        data = self._bucket(bucket)[key]
        with open(path, "wb") as handle:
            handle.write(data)
        self._feed(data, callback)

    def get_to_file(self, bucket: str, key: str, path: str, callback: Any = None) -> str:
        self.calls.append(("get_to_file", bucket, key))
        data = self._bucket(bucket)[key]
        with open(path, "wb") as handle:
            handle.write(data)
        self._feed(data, callback)
        return _md5(data)

    def delete_object(self, bucket: str, key: str) -> None:
        self.calls.append(("delete_object", bucket, key))
        self._bucket(bucket).pop(key, None)

    def delete_objects(self, bucket: str, keys: Any) -> None:
        keys = list(keys)
        self.calls.append(("delete_objects", bucket, tuple(keys)))
        for key in keys:
            self._bucket(bucket).pop(key, None)

    def ops(self, *names: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in names]


def write(path: Any, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)
