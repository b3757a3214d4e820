"""Buckets: S3 buckets holding a task's input files (resources) and output files (results).

All S3 traffic goes through the connection's :class:`~qcompute._storage.Storage`; multi-file calls
go through the sync engine of :mod:`qcompute._sync`. Keys are POSIX paths on every platform (see
:func:`~qcompute._storage.normalize_key`).

Progress: every transfer method takes ``progress``: ``True`` draws tqdm bars (bytes, and files
when the call moves several), a callable is called as ``progress(read, total, filename)`` as
bytes move (``read`` and ``total`` count the bytes of the whole call, ``filename`` is the key of
the file being moved), ``None``/``False`` shows nothing. Server-side copies and skipped files
move no bytes, so they are not reported to the callable. An exception raised by the callable
stops the call (the files already moved stay moved).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from ._etags import EtagCache, Etags, default_cache_path, scan_directory, scan_files
from ._objects import ObjectInfo, normalize_key, normalize_prefix
from ._sync import (
    TRANSFER_WORKERS,
    Progress,
    Tracker,
    UploadPlan,
    plan_download,
    plan_upload,
    run_download,
    run_upload,
)

if TYPE_CHECKING:
    from ._storage import Storage
    from .connection import Connection

__all__ = ["Bucket", "ObjectInfo", "Progress", "TRANSFER_WORKERS"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _etags() -> Etags:
    """The local ETags of one call, backed by the persistent cache."""
    return Etags(EtagCache(default_cache_path()))


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
    def add_file(self, local: Union[PathLike, Any], remote: Optional[str] = None,
                 progress: Progress = None) -> str:
        """Upload one file (PutObject, or multipart from 8 MiB with parts in parallel, read part
        by part).

        Args:
            local: a file path, or a binary file object (then ``remote`` is required).
            remote: the key; default the file's name; a key ending in ``/`` gets the file's name.
            progress: see the module docstring.

        Returns:
            The key written.
        """
        if hasattr(local, "read"):
            if not remote:
                raise ValueError("add_file(fileobj) needs a remote key")
            key = normalize_key(remote)
            try:  # the size left to read, when the file object can tell
                start = local.tell()
                total = local.seek(0, os.SEEK_END) - start
                local.seek(start)
            except (AttributeError, OSError, ValueError):
                total = 0
            with Tracker(progress, total, 1, f"upload {key}") as tracker:
                self._storage.upload_fileobj(self._name, key, local, tracker.callback(key))
            return key
        path = os.fspath(local)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        name = os.path.basename(path)
        key = normalize_key(remote) if remote else name
        if not key or key.endswith("/"):
            key = key + name
        with Tracker(progress, os.path.getsize(path), 1, f"upload {key}") as tracker:
            self._storage.upload_file(self._name, key, path, tracker.callback(key))
        return key

    def add_directory(self, local: PathLike, remote: Optional[str] = None,
                      progress: Progress = None) -> list[str]:
        """Upload every file under ``local`` to ``remote/<relative path>``, in parallel, without
        comparing with the bucket (see :meth:`sync_directory` for that).

        Returns:
            The keys written.
        """
        files = scan_directory(local, remote)
        plan = UploadPlan(tuple(files.values()), (), (), ())
        run_upload(self._storage, self._name, plan, _etags(), progress, first_alone=True,
                   log=logger)
        return sorted(files)

    def add_string(self, string: Union[str, bytes], remote: str,
                   progress: Progress = None) -> str:
        """Write ``string`` (UTF-8 encoded if text) to the key ``remote``."""
        key = normalize_key(remote)
        if not key:
            raise ValueError("add_string needs a remote key")
        data = string.encode("utf-8") if isinstance(string, str) else bytes(string)
        self._storage.put_bytes(self._name, key, data)
        with Tracker(progress, len(data), 1, f"upload {key}") as tracker:
            callback = tracker.callback(key)
            if callback is not None:
                callback(len(data))
        return key

    def __setitem__(self, remote: str, local: PathLike) -> None:
        """``bucket["dir/name"] = path``: :meth:`add_file` or :meth:`add_directory`."""
        if os.path.isdir(local):
            self.add_directory(local, remote)
        else:
            self.add_file(local, remote)

    def copy_file(self, source: str, dest: str) -> str:
        """Copy the object ``source`` to the key ``dest`` on the server (CopyObject, no bytes
        move through this machine). Returns ``dest``."""
        key = normalize_key(dest)
        self._storage.copy_object(self._name, normalize_key(source), key)
        return key

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
        with Tracker(progress, size, 1, f"download {key}") as tracker:
            self._storage.download_file(self._name, key, str(target), tracker.callback(key))
        return str(target)

    def get_all_files(self, output_dir: PathLike, progress: Progress = None) -> list[str]:
        """Download the whole bucket under ``output_dir`` (keys become relative paths).

        Local files that already hold an object's content (same size and ETag) are kept; objects
        with the same content are downloaded once. Keys that would leave ``output_dir``
        (``..``) are skipped with a warning. Local files with no object are left alone.

        Returns:
            The local paths of the bucket's files (downloaded or already there).
        """
        return self._download(output_dir, "", strip=False, progress=progress)

    def sync_remote_to_local(self, local_dir: PathLike, remote: Optional[str] = None,
                             progress: Progress = None) -> list[str]:
        """Make ``local_dir`` hold the objects under the folder ``remote`` (default: the whole
        bucket), with that prefix removed from their paths.

        Only missing and different files are downloaded (compared by size, then ETag, with the
        local ETag cache); duplicates are downloaded once. Local files with no object are kept.

        Returns:
            The local paths of the folder's files (downloaded or already there).
        """
        return self._download(local_dir, normalize_prefix(remote), strip=True, progress=progress)

    def _download(self, output_dir: PathLike, prefix: str, *, strip: bool,
                  progress: Progress) -> list[str]:
        objects = list(self._storage.list_objects(self._name, prefix))
        etags = _etags()
        plan = plan_download(objects, output_dir, etags, strip=prefix if strip else "")
        for key in plan.refused:
            logger.warning("skipping key %r of bucket %s: not a safe relative path", key,
                           self._name)
        logger.debug("download %s/%s: %d to get, %d local copies, %d already there", self._name,
                     prefix, len(plan.download), len(plan.local_copy), len(plan.skip))
        os.makedirs(output_dir, exist_ok=True)
        run_download(self._storage, self._name, plan, etags, progress, log=logger)
        paths = {f.obj.key: f.target for f in plan.download + plan.local_copy + plan.skip}
        return [paths[obj.key] for obj in objects if obj.key in paths]

    # -- deletes and sync
    def delete_file(self, remote: str) -> None:
        """Delete one object (DeleteObject)."""
        self._storage.delete_object(self._name, normalize_key(remote))

    def delete(self) -> None:
        """Delete every object (DeleteObjects), then the bucket (DeleteBucket)."""
        keys = [o.key for o in self._storage.list_objects(self._name)]
        self._storage.delete_objects(self._name, keys)
        self._storage.delete_bucket(self._name)

    def sync_directory(self, local: PathLike, verbose: bool = False,
                       remote: Optional[str] = None, progress: Progress = None,
                       delete: bool = True) -> None:
        """Make the folder ``remote`` (or the whole bucket) mirror the directory ``local``.

        See :meth:`sync_files`; the keys are the files' relative paths, with ``/`` separators
        on every platform.

        Args:
            local: the directory.
            verbose: log each transfer at INFO instead of DEBUG.
            remote: the key prefix (a folder); ``None`` mirrors the whole bucket.
            progress: see the module docstring.
            delete: delete the objects of the folder that have no local file (False: only
                upload what is missing or different).
        """
        files = scan_directory(local, remote)
        self._sync(files, verbose, normalize_prefix(remote), progress, delete)

    def sync_files(self, files: Mapping[str, PathLike], verbose: bool = False,
                   remote: Optional[str] = None, progress: Progress = None) -> None:
        """Make the folder ``remote`` (or the whole bucket) hold exactly ``files``.

        ``files`` maps keys (relative to ``remote``) to local paths. Only one prefix is listed
        (ListObjectsV2). A file is sent when its key is missing or its size or ETag differ; an
        ETag is computed only when sizes match, and remembered in a local cache keyed on path,
        size and modification time, so unchanged files are not read again. New content that the
        folder already holds (a duplicate, a renamed file) is copied on the server, and files
        sharing new content are uploaded once and copied. Transfers run 16 at a time. Objects of
        the folder that are not keys of ``files`` are deleted, once everything is in place.

        A sync that stopped halfway (an error, an interrupt) moves only what is still missing
        when run again.

        Args:
            files: key (relative to ``remote``; ``\\`` counts as ``/``) → local file path.
            verbose: log each transfer at INFO instead of DEBUG.
            remote: the key prefix (a folder); ``None`` mirrors the whole bucket.
            progress: see the module docstring.

        Raises:
            FileNotFoundError: a path is not a regular file (nothing is sent).
            ValueError: a key is empty or ends with ``/``.
        """
        prefix = normalize_prefix(remote)
        self._sync(scan_files(files, prefix), verbose, prefix, progress)

    def _sync(self, files: Mapping[str, Any], verbose: bool, prefix: str,
              progress: Progress, delete: bool = True) -> None:
        listing = {o.key: o for o in self._storage.list_objects(self._name, prefix)}
        etags = _etags()
        try:
            plan = plan_upload(files, listing, etags, delete_prefix=prefix if delete else None)
        except BaseException:
            etags.save()
            raise
        logger.debug("sync %s/%s: %d to upload, %d to copy, %d to delete, %d unchanged "
                     "(%d files hashed)", self._name, prefix, len(plan.upload), len(plan.copy),
                     len(plan.delete), len(plan.unchanged), etags.computed)
        run_upload(self._storage, self._name, plan, etags, progress, verbose=verbose,
                   first_alone=not listing, log=logger)

