"""Buckets: S3 buckets holding a task's input files (resources) and output files (results).

All S3 traffic goes through the connection's :class:`~qcompute._storage.Storage`. Keys are POSIX
paths (see :func:`~qcompute._storage.normalize_key`).

Progress: every transfer method takes ``progress``: ``True`` draws a tqdm bar, a callable is
called as ``progress(read, total, filename)`` as bytes move (``read`` and ``total`` count the
bytes of the whole call, ``filename`` is the file being moved), ``None``/``False`` shows nothing.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Union

from ._storage import (
    ObjectInfo,
    join_key,
    normalize_key,
    normalize_prefix,
    plan_sync,
)

if TYPE_CHECKING:
    from ._storage import Storage
    from .connection import Connection

__all__ = ["Bucket", "ObjectInfo"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
Progress = Union[None, bool, Callable[[int, int, str], Any]]
TRANSFER_WORKERS = 8  # files moved at the same time by multi-file calls


class _Progress:
    """Aggregates byte counts from transfer threads and reports them (tqdm bar or callable)."""

    def __init__(self, progress: Progress, total: int, desc: str) -> None:
        self._fn = progress if callable(progress) else None
        self._bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
        self.total = total
        self.read = 0
        self._lock = threading.Lock()

    def callback(self, filename: str) -> Optional[Callable[[int], None]]:
        if self._fn is None and self._bar is None:
            return None

        def moved(count: int) -> None:
            with self._lock:
                self.read += count
                if self._bar is not None:
                    self._bar.update(count)
                if self._fn is not None:
                    self._fn(self.read, self.total, filename)

        return moved

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _local_files(directory: PathLike) -> dict[str, str]:
    """relative POSIX path → file path, for every file under ``directory``."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    return {
        path.relative_to(root).as_posix(): str(path)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _safe_target(output_dir: PathLike, key: str) -> Optional[Path]:
    """Where ``key`` goes under ``output_dir``, or None if the key would escape it."""
    parts = [part for part in key.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        return None
    return Path(output_dir).joinpath(*parts)


class Bucket:
    """An S3 bucket, optionally seen through a prefix filter and a prefix strip (for tasks).

    Args:
        connection: the owning connection.
        name: the bucket name (``uuid`` is the same thing, as in the dialect).
        create: send CreateBucket now (a bucket the caller owns already is fine).
        prefix_filtering: only keys with this prefix are given to a task.
        strip_prefix: this prefix is removed from the paths a task sees.
        cache_ttl_sec: how long a task's node may cache these resources.
    """

    def __init__(
        self,
        connection: "Connection",
        name: str,
        create: bool = True,
        *,
        prefix_filtering: Optional[str] = None,
        strip_prefix: Optional[str] = None,
        cache_ttl_sec: Optional[int] = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a bucket name must be a non-empty string, got {name!r}")
        self._conn = connection
        self._name = name.strip()
        self._filtering = normalize_key(prefix_filtering) if prefix_filtering else None
        self._strip = normalize_key(strip_prefix) if strip_prefix else None
        self._cache_ttl_sec = cache_ttl_sec
        if create:
            self._storage.create_bucket(self._name)

    # -- identity and task-resource views
    @property
    def name(self) -> str:
        return self._name

    @property
    def uuid(self) -> str:
        """Same as :attr:`name` (the dialect's word)."""
        return self._name

    @property
    def prefix_filtering(self) -> Optional[str]:
        return self._filtering

    @property
    def strip_prefix(self) -> Optional[str]:
        return self._strip

    @property
    def cache_ttl_sec(self) -> Optional[int]:
        return self._cache_ttl_sec

    def _view(self, **changes: Any) -> "Bucket":
        options = {"prefix_filtering": self._filtering, "strip_prefix": self._strip,
                   "cache_ttl_sec": self._cache_ttl_sec, **changes}
        return Bucket(self._conn, self._name, create=False, **options)

    def with_filtering(self, prefix: str) -> "Bucket":
        """A copy that gives a task only the keys starting with ``prefix`` (no request)."""
        return self._view(prefix_filtering=prefix)

    def with_resource_transformation(self, prefix: str) -> "Bucket":
        """A copy whose files appear to a task with ``prefix`` removed (no request)."""
        return self._view(strip_prefix=prefix)

    def with_cache_ttl(self, seconds: Optional[int]) -> "Bucket":
        """A copy with a resource cache lifetime (no request)."""
        return self._view(cache_ttl_sec=seconds)

    def to_resource_json(self) -> dict[str, Any]:
        """The ``advancedResourceBuckets`` entry for this bucket."""
        doc: dict[str, Any] = {"bucketName": self._name}
        if self._filtering:
            doc["filtering"] = {"prefixFiltering": {"prefix": self._filtering}}
        if self._strip:
            doc["resourcesTransformation"] = {"stripPrefix": {"prefix": self._strip}}
        doc["cacheTTLSec"] = self._cache_ttl_sec
        return doc

    @classmethod
    def from_resource_json(cls, connection: "Connection", doc: Mapping[str, Any]) -> "Bucket":
        """Read an ``advancedResourceBuckets`` entry (no request)."""
        filtering = ((doc.get("filtering") or {}).get("prefixFiltering") or {}).get("prefix")
        strip = ((doc.get("resourcesTransformation") or {}).get("stripPrefix") or {}).get("prefix")
        return cls(connection, doc["bucketName"], create=False, prefix_filtering=filtering,
                   strip_prefix=strip, cache_ttl_sec=doc.get("cacheTTLSec"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bucket):
            return NotImplemented
        return self.to_resource_json() == other.to_resource_json()

    def __hash__(self) -> int:
        return hash((self._name, self._filtering, self._strip, self._cache_ttl_sec))

    def __repr__(self) -> str:
        extra = "".join(
            f" {label}={value!r}"
            for label, value in (("filter", self._filtering), ("strip", self._strip))
            if value
        )
        return f"<Bucket {self._name!r}{extra}>"

    @property
    def _storage(self) -> "Storage":
        return self._conn._storage

    # -- listing
    def list_files(self) -> list[ObjectInfo]:
        """Every object of the bucket (ListObjectsV2)."""
        return list(self._storage.list_objects(self._name))

    def directory(self, prefix: str = "") -> list[ObjectInfo]:
        """The objects whose key starts with ``prefix`` (ListObjectsV2 with ``Prefix``)."""
        return list(self._storage.list_objects(self._name, normalize_key(prefix)))

    # -- uploads
    def add_file(self, local: Union[PathLike, Any], remote: Optional[str] = None) -> str:
        """Upload one file (PutObject, or multipart from 8 MiB).

        Args:
            local: a file path, or a binary file object (then ``remote`` is required).
            remote: the key; default the file's name; a key ending in ``/`` gets the file's name.

        Returns:
            The key written.
        """
        if hasattr(local, "read"):
            if not remote:
                raise ValueError("add_file(fileobj) needs a remote key")
            key = normalize_key(remote)
            self._storage.upload_fileobj(self._name, key, local)
            return key
        path = os.fspath(local)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        name = os.path.basename(path)
        key = normalize_key(remote) if remote else name
        if not key or key.endswith("/"):
            key = key + name
        self._storage.upload_file(self._name, key, path)
        return key

    def add_directory(self, local: PathLike, remote: Optional[str] = None,
                      progress: Progress = None) -> list[str]:
        """Upload every file under ``local`` to ``remote/<relative path>`` (no diffing).

        Returns:
            The keys written.
        """
        files = {join_key(remote, rel): path for rel, path in _local_files(local).items()}
        self._upload(files, progress)
        return sorted(files)

    def add_string(self, string: Union[str, bytes], remote: str) -> str:
        """Write ``string`` (UTF-8 encoded if text) to the key ``remote``."""
        key = normalize_key(remote)
        if not key:
            raise ValueError("add_string needs a remote key")
        data = string.encode("utf-8") if isinstance(string, str) else bytes(string)
        self._storage.put_bytes(self._name, key, data)
        return key

    def __setitem__(self, remote: str, local: PathLike) -> None:
        """``bucket["dir/name"] = path``: :meth:`add_file` or :meth:`add_directory`."""
        if os.path.isdir(local):
            self.add_directory(local, remote)
        else:
            self.add_file(local, remote)

    def _upload(self, files: Mapping[str, str], progress: Progress, verbose: bool = False) -> None:
        total = sum(os.path.getsize(path) for path in files.values())
        level = logging.INFO if verbose else logging.DEBUG
        with _Progress(progress, total, f"upload to {self._name}") as tracker:
            def one(item: tuple[str, str]) -> None:
                key, path = item
                logger.log(level, "upload %s -> %s/%s", path, self._name, key)
                self._storage.upload_file(self._name, key, path, tracker.callback(key))

            self._run_parallel(one, files.items())

    @staticmethod
    def _run_parallel(work: Callable[[Any], None], items: Iterable[Any]) -> None:
        with ThreadPoolExecutor(max_workers=TRANSFER_WORKERS) as pool:
            for _ in pool.map(work, list(items)):  # re-raises the first failure
                pass

    # -- downloads
    def get_file(self, remote: str, local: Optional[PathLike] = None,
                 progress: Progress = None) -> str:
        """Download one object (GetObject, ranged and parallel when large).

        Args:
            remote: the key.
            local: the target file, or a directory to put it in; default the key's file name in
                the current directory.
            progress: see the module docstring.

        Returns:
            The local path written.
        """
        key = normalize_key(remote)
        name = key.rstrip("/").rsplit("/", 1)[-1]
        target = Path(local) if local is not None else Path(name)
        if target.is_dir():
            target = target / name
        target.parent.mkdir(parents=True, exist_ok=True)
        size = self._storage.head_object(self._name, key).size if progress else 0
        with _Progress(progress, size, f"download {key}") as tracker:
            self._storage.download_file(self._name, key, str(target), tracker.callback(key))
        return str(target)

    def get_all_files(self, output_dir: PathLike, progress: Progress = None) -> list[str]:
        """Download the whole bucket under ``output_dir`` (keys become relative paths).

        Keys that would leave ``output_dir`` (``..``) are skipped with a warning.

        Returns:
            The local paths written.
        """
        return self._download(self._storage.list_objects(self._name), output_dir, progress)

    def _download(self, objects: Iterable[ObjectInfo], output_dir: PathLike,
                  progress: Progress) -> list[str]:
        jobs: list[tuple[ObjectInfo, Path]] = []
        for obj in objects:
            target = _safe_target(output_dir, obj.key)
            if target is None:
                logger.warning("skipping key %r of bucket %s: not a safe relative path",
                               obj.key, self._name)
            elif obj.key.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                jobs.append((obj, target))
        with _Progress(progress, sum(o.size for o, _ in jobs), f"download {self._name}") as tracker:
            def one(job: tuple[ObjectInfo, Path]) -> None:
                obj, target = job
                target.parent.mkdir(parents=True, exist_ok=True)
                self._storage.download_file(self._name, obj.key, str(target),
                                            tracker.callback(obj.key))

            self._run_parallel(one, jobs)
        return [str(target) for _, target in jobs]

    # -- deletes and sync
    def delete_file(self, remote: str) -> None:
        """Delete one object (DeleteObject)."""
        self._storage.delete_object(self._name, normalize_key(remote))

    def delete(self) -> None:
        """Delete every object (DeleteObjects), then the bucket (DeleteBucket)."""
        self._storage.delete_objects(self._name, [o.key for o in self._storage.list_objects(self._name)])
        self._storage.delete_bucket(self._name)

    def sync_directory(self, local: PathLike, verbose: bool = False,
                       remote: Optional[str] = None, progress: Progress = None) -> None:
        """Make ``remote/`` (or the whole bucket) mirror the directory ``local``.

        New and changed files are uploaded (compared by S3 ETag, computed locally only when
        sizes match), and objects under the prefix that have no local file are deleted.

        Args:
            local: the directory.
            verbose: log each transfer at INFO instead of DEBUG.
            remote: the key prefix (a folder); ``None`` mirrors the whole bucket.
            progress: see the module docstring.
        """
        files = {join_key(remote, rel): path for rel, path in _local_files(local).items()}
        self.sync_files(files, verbose=verbose, remote=remote, progress=progress)

    def sync_files(self, files: Mapping[str, PathLike], verbose: bool = False,
                   remote: Optional[str] = None, progress: Progress = None) -> None:
        """Make the bucket (or its ``remote/`` folder) hold exactly ``files`` (key → local path).

        Objects under ``remote/`` (or anywhere, when ``remote`` is None) that are not keys of
        ``files`` are deleted; new and changed files are uploaded in parallel.
        """
        wanted = {normalize_key(key): os.fspath(path) for key, path in files.items()}
        for key, path in wanted.items():
            if not key or key.endswith("/"):
                raise ValueError(f"not a file key: {key!r}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
        prefix = normalize_prefix(remote)
        listing = {o.key: o for o in self._storage.list_objects(self._name, prefix)}
        plan = plan_sync(wanted, listing, delete_prefix=prefix)
        logger.debug("sync %s/%s: %d to upload, %d to delete, %d unchanged", self._name, prefix,
                     len(plan.upload), len(plan.delete), len(plan.unchanged))
        self._upload(dict(plan.upload), progress, verbose)
        if plan.delete:
            for key in plan.delete:
                logger.log(logging.INFO if verbose else logging.DEBUG, "delete %s/%s",
                           self._name, key)
            self._storage.delete_objects(self._name, plan.delete)
