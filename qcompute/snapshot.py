"""Task snapshots: upload a running task's result files now (instant) or every N seconds.

Results go to the task's result bucket (or to ``bucket``, under ``bucket_prefix``), filtered by
``whitelist``/``blacklist`` regular expressions (the task's ``snapshot_whitelist`` /
``snapshot_blacklist`` by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from . import _resource
from ._fields import parse_datetime
from .bucket import Bucket
from .exceptions import MissingTaskException
from .states import SnapshotState

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Snapshot", "SnapshotMethods"]

BucketRef = Union[Bucket, str, None]
# Other spellings a server may use for a snapshot status.
_ALIASES = {"failed": SnapshotState.FAILURE, "succeeded": SnapshotState.SUCCESS,
            "pending": SnapshotState.TRIGGERED}


def _status(raw: Any) -> Union[SnapshotState, str, None]:
    if raw is None:
        return None
    text = str(raw)
    for state in SnapshotState:
        if state.value.lower() == text.lower():
            return state
    return _ALIASES.get(text.lower(), text)


def _date(raw: Any) -> Optional[datetime]:
    return None if not raw else parse_datetime(raw)


@dataclass(frozen=True)
class Snapshot:
    """One snapshot (``GET /tasks/{uuid}/snapshot/{id}``).

    ``status`` is a :class:`~qcompute.SnapshotState` (matched case-insensitively, ``Failed``
    read as Failure), or the raw text of a status this SDK does not know.
    """

    id: str
    task_uuid: Optional[str] = None
    status: Union[SnapshotState, str, None] = None
    trigger_date: Optional[datetime] = None
    last_update_date: Optional[datetime] = None
    whitelist: Optional[str] = None
    blacklist: Optional[str] = None
    bucket: Optional[str] = None
    bucket_prefix: Optional[str] = None
    size_to_upload: Optional[int] = None
    transferred_size: Optional[int] = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Snapshot":
        config = doc.get("snapshotConfig") or {}
        return cls(
            id=str(doc.get("id")), task_uuid=doc.get("taskUuid"), status=_status(doc.get("status")),
            trigger_date=_date(doc.get("triggerDate")),
            last_update_date=_date(doc.get("lastUpdateDate")),
            whitelist=config.get("whitelist"), blacklist=config.get("blacklist"),
            bucket=config.get("bucket"), bucket_prefix=config.get("bucketPrefix"),
            size_to_upload=doc.get("sizeToUpload"), transferred_size=doc.get("transferredSize"),
        )

    def is_final(self) -> bool:
        return isinstance(self.status, SnapshotState) and self.status.is_final()


def _config(whitelist: Optional[str], blacklist: Optional[str], bucket: BucketRef,
            bucket_prefix: Optional[str]) -> dict[str, Any]:
    if bucket is not None and not isinstance(bucket, (Bucket, str)):
        raise TypeError(f"bucket must be a Bucket or a bucket name, got {bucket!r}")
    return {"whitelist": whitelist, "blacklist": blacklist,
            "bucket": bucket.name if isinstance(bucket, Bucket) else bucket,
            "bucketPrefix": bucket_prefix}


class SnapshotMethods:
    """The snapshot methods of :class:`~qcompute.Task`."""

    if not TYPE_CHECKING:  # no __dict__ at run time; mypy sees Task's slots
        __slots__ = ()
    _pending_snapshot: Optional[dict[str, Any]]
    _conn: "Connection"

    if TYPE_CHECKING:  # provided by Resource
        def _url(self, *extra: Any) -> str: ...
        def _is_submitted(self) -> bool: ...
        def _require_submitted(self, action: str) -> None: ...
        def update(self, flushcache: bool = False) -> bool: ...

    def snapshot(self, interval: int, whitelist: Optional[str] = None,
                 blacklist: Optional[str] = None, bucket: BucketRef = None,
                 bucket_prefix: Optional[str] = None) -> None:
        """Upload the results every ``interval`` seconds while the task runs.

        Calls ``POST /tasks/{uuid}/snapshot/periodic``. Before submit the request is kept and
        sent right after the task is accepted (by :meth:`submit` or ``submit_tasks``).

        Raises:
            ValueError: ``interval`` is not a positive int.
            BadRequestError: the server refused it.
        """
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            raise ValueError(f"a snapshot interval is a number of seconds > 0, got {interval!r}")
        body = {"interval": interval, **_config(whitelist, blacklist, bucket, bucket_prefix)}
        if not self._is_submitted():
            self._pending_snapshot = body
            return
        self._post_periodic(body)

    def _post_periodic(self, body: dict[str, Any]) -> None:
        self._conn._http.post(self._url("snapshot", "periodic"), json=body,
                              not_found=MissingTaskException)

    def _send_pending_snapshot(self) -> bool:
        """Called once the task has a uuid: send the periodic snapshot asked for before. True
        if one was sent."""
        body = getattr(self, "_pending_snapshot", None)  # unset on objects built from JSON
        if body is None:
            return False
        self._pending_snapshot = None
        self._post_periodic(body)
        return True

    def instant(self, whitelist: Optional[str] = None, blacklist: Optional[str] = None,
                bucket: BucketRef = None, bucket_prefix: Optional[str] = None) -> str:
        """Upload the results now: ``POST /tasks/{uuid}/snapshot``, then refresh the task.

        Returns:
            The snapshot id (see :meth:`snapshot_status` and :meth:`wait_snapshot`).
        """
        self._require_submitted("take a snapshot")
        reply = self._conn._http.post(self._url("snapshot"),
                                      json=_config(whitelist, blacklist, bucket, bucket_prefix),
                                      not_found=MissingTaskException)
        self.update(flushcache=True)
        return str((reply or {}).get("id"))

    def snapshot_status(self, snapshot_id: str) -> Snapshot:
        """One snapshot's progress: ``GET /tasks/{uuid}/snapshot/{id}``."""
        self._require_submitted("read a snapshot")
        doc = self._conn._http.get(self._url("snapshot", snapshot_id),
                                   not_found=MissingTaskException)
        return Snapshot.from_json(doc or {})

    def wait_snapshot(self, snapshot_id: str, timeout: Optional[float] = None) -> bool:
        """Poll :meth:`snapshot_status` (0.05 s, growing to 1 s) until Success or Failure.

        Returns:
            True when the snapshot is final (check ``snapshot_status(id).status``), False on
            timeout.
        """
        return _resource.poll(lambda: self.snapshot_status(snapshot_id).is_final(), timeout)
