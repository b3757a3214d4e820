"""The sync engine behind :class:`~qcompute.bucket.Bucket`'s multi-file calls.

* Planning, pure and testable without a network: :func:`plan_upload` (uploads, server-side
  copies for duplicates and renames, deletes) and :func:`plan_download` (downloads, local copies,
  skips of identical files). Local ETags come from :class:`qcompute._etags.Etags` (a persistent
  cache, so an unchanged file is never hashed twice).
* Running a plan: :func:`run_upload` and :func:`run_download` move files through a bounded pool
  of threads, small files with one request each, large ones through one shared boto3 transfer
  manager (multipart, bounded memory), and report progress.

No boto3 here: every S3 call goes through :class:`qcompute._storage.Storage`.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat as stat_module
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Union

from ._etags import Etags, LocalFile
from ._objects import (
    COPY_LIMIT,
    MULTIPART_SIZE,
    ObjectInfo,
    etag_label,
    normalize_key,
    upload_label,
)
from .exceptions import StorageError

if TYPE_CHECKING:
    from ._storage import Storage

__all__ = [
    "TRANSFER_WORKERS", "UploadPlan", "Copy", "plan_upload", "DownloadPlan", "Fetch",
    "plan_download", "safe_target", "Tracker", "run_upload", "run_download",
]

logger = logging.getLogger(__name__)

TRANSFER_WORKERS = 16  # files moved at the same time (large files share one more pool of 16)
_WINDOWS = os.name == "nt"

Progress = Union[None, bool, Callable[[int, int, str], Any]]


# ----------------------------------------------------------------------------- upload planning
@dataclass(frozen=True)
class Copy:
    """A server-side copy ``source`` → ``file.key``.

    ``etag`` is the source's expected ETag when it is a remote object (the copy is refused if it
    changed, and the file is uploaded instead); ``None`` when the source is uploaded by this
    same sync.
    """

    source: str
    file: LocalFile
    etag: Optional[str]

    @property
    def key(self) -> str:
        return self.file.key


@dataclass(frozen=True)
class UploadPlan:
    upload: tuple[LocalFile, ...]
    copy: tuple[Copy, ...]
    delete: tuple[str, ...]
    unchanged: tuple[str, ...]


def plan_upload(local: Mapping[str, LocalFile], remote: Mapping[str, ObjectInfo], etags: Etags,
                *, delete_prefix: Optional[str] = "") -> UploadPlan:
    """Decide how to make the listed objects ``remote`` hold the files ``local``.

    * Same key, same size, same ETag: unchanged. ETags are only compared when sizes match, for
      the part size the remote object was uploaded with (see :func:`etag_label`).
    * New or changed content that an object of the listing already holds (a duplicate, or a
      rename): a server-side copy. Files that share new content: one upload, then copies.
      Only files whose size matches another file or object are ever hashed for this.
    * Listed objects under ``delete_prefix`` with no local file: deleted (``None``: none).
      Folder markers (keys ending in ``/``) are kept.
    """
    etags.preload(local.values())
    same_size = []
    for key, f in local.items():
        obj = remote.get(key)
        if obj is not None and obj.size == f.size:
            label = etag_label(f.size, obj.etag)
            if label is not None:
                same_size.append((f, label))
    etags.resolve(same_size)
    unchanged = {f.key for f, label in same_size if etags.get(f, label) == remote[f.key].etag}
    pending = [local[key] for key in sorted(local) if key not in unchanged]

    # copy sources: listed objects that this sync does not write (deletes come last)
    pending_keys = {f.key for f in pending}
    sources: dict[int, dict[str, dict[str, str]]] = {}  # size -> label -> etag -> key
    for key in sorted(remote):
        obj = remote[key]
        if key in pending_keys or key.endswith("/") or not 0 < obj.size <= COPY_LIMIT:
            continue
        label = etag_label(obj.size, obj.etag)
        if label is not None:
            sources.setdefault(obj.size, {}).setdefault(label, {}).setdefault(obj.etag, key)
    sizes = Counter(f.size for f in pending)
    copyable = [f for f in pending if 0 < f.size <= COPY_LIMIT]
    etags.resolve([(f, label) for f in copyable for label in sources.get(f.size, {})] +
                  [(f, upload_label(f.size)) for f in copyable if sizes[f.size] > 1])

    uploads: list[LocalFile] = []
    copies: list[Copy] = []
    first: dict[tuple[int, str], str] = {}
    for f in pending:
        if not 0 < f.size <= COPY_LIMIT:
            uploads.append(f)
            continue
        found = None
        for label, index in sources.get(f.size, {}).items():
            etag = etags.get(f, label)
            if etag in index:
                found = Copy(index[etag], f, etag)
                break
        if found is not None:
            copies.append(found)
            continue
        if sizes[f.size] > 1:
            content = (f.size, etags.get(f, upload_label(f.size)) or "")
            if content in first:
                copies.append(Copy(first[content], f, None))
                continue
            first[content] = f.key
        uploads.append(f)
    delete: tuple[str, ...] = ()
    if delete_prefix is not None:
        delete = tuple(sorted(
            key for key in remote
            if key not in local and key.startswith(delete_prefix) and not key.endswith("/")))
    return UploadPlan(tuple(uploads), tuple(copies), delete, tuple(sorted(unchanged)))


# ----------------------------------------------------------------------------- download planning
def safe_target(output_dir: Union[str, "os.PathLike[str]"], relative: str) -> Optional[str]:
    """Where the key ``relative`` goes under ``output_dir``, or None if it would escape it.

    Backslashes count as separators (a Windows-made key), so ``a\\..\\..\\x`` is refused too;
    on Windows, so are drive letters and streams (a ``:`` in a part).
    """
    parts = [part for part in normalize_key(relative).split("/") if part]
    if not parts or any(part in (".", "..") or (_WINDOWS and ":" in part) for part in parts):
        return None
    return os.path.join(os.fspath(output_dir), *parts)


@dataclass(frozen=True)
class Fetch:
    """Bring ``obj`` to the file ``target``: a download, or a copy of the local file ``source``
    that already holds the same content."""

    obj: ObjectInfo
    target: str
    source: Optional[str] = None


@dataclass(frozen=True)
class DownloadPlan:
    download: tuple[Fetch, ...]  # GETs (one per distinct content)
    local_copy: tuple[Fetch, ...]  # after the downloads: copies of identical local files
    skip: tuple[Fetch, ...]  # objects whose local file is already identical
    folders: tuple[str, ...]  # folder markers: directories to create
    refused: tuple[str, ...]  # keys that would leave the output directory


def plan_download(objects: Iterable[ObjectInfo], output_dir: Union[str, "os.PathLike[str]"],
                  etags: Etags, *, strip: str = "") -> DownloadPlan:
    """Decide how to bring ``objects`` under ``output_dir`` (key minus ``strip`` = relative path).

    A local file of the same size and ETag is kept. Objects with the same ETag are downloaded
    once and copied locally; so is an object whose content a kept local file already has.
    """
    folders, refused = [], []
    wanted: list[tuple[ObjectInfo, str]] = []
    for obj in objects:
        relative = obj.key[len(strip):] if strip and obj.key.startswith(strip) else obj.key
        target = safe_target(output_dir, relative)
        if target is None:
            if relative.strip("/"):
                refused.append(obj.key)
        elif obj.key.endswith("/"):
            folders.append(target)
        else:
            wanted.append((obj, target))
    existing: dict[str, tuple[ObjectInfo, LocalFile]] = {}
    seen = time.time_ns()
    for obj, target in wanted:
        try:
            st = os.stat(target)
        except OSError:
            continue
        if stat_module.S_ISREG(st.st_mode) and st.st_size == obj.size:
            existing[target] = (obj, LocalFile.from_stat(obj.key, target, st, seen))
    etags.preload(f for _, f in existing.values())
    needs = [(f, label) for obj, f in existing.values()
             if (label := etag_label(obj.size, obj.etag)) is not None]
    etags.resolve(needs)
    skip: list[Fetch] = []
    have: dict[str, str] = {}
    for obj, f in existing.values():
        label = etag_label(obj.size, obj.etag)
        if obj.etag and label is not None and etags.get(f, label) == obj.etag:
            skip.append(Fetch(obj, f.path))
            have.setdefault(obj.etag, f.path)
    skipped = {fetch.obj.key for fetch in skip}
    download, local_copy = [], []
    for obj, target in wanted:
        if obj.key in skipped:
            continue
        if obj.etag and obj.etag in have:
            local_copy.append(Fetch(obj, target, have[obj.etag]))
        else:
            download.append(Fetch(obj, target))
            if obj.etag and obj.size:
                have[obj.etag] = target
    return DownloadPlan(tuple(download), tuple(local_copy), tuple(skip), tuple(folders),
                        tuple(refused))


# ----------------------------------------------------------------------------- progress
class Tracker:
    """Progress of one call: a callable ``progress(read, total, filename)`` gets byte counts of
    the whole call as they move; ``progress=True`` draws tqdm bars (bytes, and files when the
    call moves several)."""

    def __init__(self, progress: Progress, total: int, files: int, desc: str) -> None:
        self._fn = progress if callable(progress) else None
        self._bytes: Any = None
        self._files: Any = None
        if progress is True:
            from tqdm.auto import tqdm

            self._bytes = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=desc, leave=True)
            if files > 1:
                self._files = tqdm(total=files, unit="file", desc=desc, leave=True)
        self.total = total
        self.read = 0
        self._lock = threading.Lock()

    def callback(self, filename: str) -> Optional[Callable[[int], None]]:
        """A byte-count callback for the transfer of ``filename`` (None if nobody listens)."""
        if self._fn is None and self._bytes is None:
            return None

        def moved(count: int) -> None:
            with self._lock:
                self.read += count
                if self._bytes is not None:
                    self._bytes.update(count)
                if self._fn is not None:
                    self._fn(self.read, self.total, filename)

        return moved

    def file_done(self) -> None:
        if self._files is not None:
            with self._lock:
                self._files.update(1)

    def close(self) -> None:
        for bar in (self._bytes, self._files):
            if bar is not None:
                bar.close()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- running plans
def _run_all(pool: ThreadPoolExecutor, jobs: Iterable[Callable[[], None]],
             on_error: Callable[[], None]) -> None:
    """Run every job in ``pool``; at the first failure, cancel what has not started, call
    ``on_error`` (to cancel large transfers), wait for the running ones, and re-raise."""
    futures: list[Future] = [pool.submit(job) for job in jobs]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
    except BaseException:
        for future in futures:
            future.cancel()
        on_error()
        wait(futures)
        raise


def run_upload(storage: "Storage", bucket: str, plan: UploadPlan, etags: Etags,
               progress: Progress = None, *, verbose: bool = False, first_alone: bool = False,
               workers: int = TRANSFER_WORKERS, log: logging.Logger = logger) -> None:
    """Carry out an upload plan: uploads and copies from remote sources in parallel, then copies
    from the files just uploaded, then the deletes. What was learnt goes to the ETag cache, even
    if the call fails halfway (so running it again moves only what is missing).

    ``first_alone``: upload the smallest file before the others, for a bucket that may be new.
    SeaweedFS creates a bucket's first volume on its first write: one write waits about 0.2 s
    for it, but 16 at once sometimes wait 1 s.
    """
    level = logging.INFO if verbose else logging.DEBUG
    total = sum(f.size for f in plan.upload)
    uploaded: dict[str, str] = {}
    try:
        with Tracker(progress, total, len(plan.upload) + len(plan.copy),
                     f"upload to {bucket}") as tracker, \
                storage.transfer_manager() as manager, \
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qcompute-s3") as pool:

            def upload(f: LocalFile) -> None:
                log.log(level, "upload %s -> %s/%s", f.path, bucket, f.key)
                callback = tracker.callback(f.key)
                if f.size >= MULTIPART_SIZE:
                    storage.upload_file(bucket, f.key, f.path, callback, manager=manager)
                    etag = storage.head_object(bucket, f.key).etag
                else:
                    etag = storage.put_file(bucket, f.key, f.path, f.size, callback)
                uploaded[f.key] = etag
                etags.record_if_unchanged(f, upload_label(f.size), etag)
                tracker.file_done()

            def copy(c: Copy) -> None:
                log.log(level, "copy %s/%s -> %s/%s", bucket, c.source, bucket, c.key)
                try:
                    etag = storage.copy_object(bucket, c.source, c.key,
                                               if_match=c.etag or uploaded.get(c.source))
                except StorageError as exc:
                    if exc.code != "PreconditionFailed":
                        raise
                    log.log(level, "%s/%s changed meanwhile: uploading %s instead", bucket,
                               c.source, c.file.path)
                    tracker.total += c.file.size
                    upload(c.file)
                    return
                uploaded[c.key] = etag
                label = etag_label(c.file.size, etag)
                if label is not None:
                    etags.record_if_unchanged(c.file, label, etag)
                tracker.file_done()

            def cancel() -> None:
                if manager is not None:
                    manager.shutdown(cancel=True)

            uploads = list(plan.upload)
            if first_alone and len(uploads) > 1:
                smallest = min(uploads, key=lambda f: f.size)
                uploads.remove(smallest)
                _run_all(pool, [partial(upload, smallest)], cancel)
            # copies from remote objects need nothing; copies from new uploads come after them
            _run_all(pool, [partial(upload, f) for f in uploads] +
                     [partial(copy, c) for c in plan.copy if c.etag], cancel)
            _run_all(pool, [partial(copy, c) for c in plan.copy if not c.etag], cancel)
        if plan.delete:
            for key in plan.delete:
                log.log(level, "delete %s/%s", bucket, key)
            storage.delete_objects(bucket, plan.delete)
    finally:
        etags.save()


def _set_mtime(path: str, obj: ObjectInfo) -> None:
    """Give a downloaded file the object's modification time (as ``aws s3 sync`` does)."""
    if obj.last_modified is not None:
        stamp = int(obj.last_modified.timestamp() * 1e9)
        os.utime(path, ns=(stamp, stamp))


def run_download(storage: "Storage", bucket: str, plan: DownloadPlan, etags: Etags,
                 progress: Progress = None, *, verbose: bool = False,
                 workers: int = TRANSFER_WORKERS, log: logging.Logger = logger) -> None:
    """Carry out a download plan: downloads in parallel (large objects through one shared
    transfer manager, ranged GETs), then the local copies. Each file is written under a
    temporary name and renamed when complete; it gets the object's modification time, and its
    ETag goes to the cache (so the next download of the same objects hashes nothing)."""
    level = logging.INFO if verbose else logging.DEBUG
    for folder in plan.folders:
        os.makedirs(folder, exist_ok=True)
    total = sum(f.obj.size for f in plan.download)
    try:
        with Tracker(progress, total, len(plan.download) + len(plan.local_copy),
                     f"download {bucket}") as tracker, \
                storage.transfer_manager() as manager, \
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qcompute-s3") as pool:

            def finish(fetch: Fetch, etag: str) -> None:
                _set_mtime(fetch.target, fetch.obj)
                st = os.stat(fetch.target)
                f = LocalFile.from_stat(fetch.obj.key, fetch.target, st, time.time_ns())
                label = etag_label(f.size, etag)
                if label is not None:
                    etags.record(f, label, etag, time.time_ns())
                tracker.file_done()

            def download(fetch: Fetch) -> None:
                obj = fetch.obj
                log.log(level, "download %s/%s -> %s", bucket, obj.key, fetch.target)
                os.makedirs(os.path.dirname(fetch.target) or ".", exist_ok=True)
                callback = tracker.callback(obj.key)
                if obj.size == 0:  # nothing to fetch
                    with open(fetch.target, "wb"):
                        etag = obj.etag
                elif obj.size >= MULTIPART_SIZE:
                    storage.download_file(bucket, obj.key, fetch.target, callback,
                                          manager=manager)
                    etag = obj.etag
                else:
                    etag = storage.get_to_file(bucket, obj.key, fetch.target, callback)
                finish(fetch, etag)

            def local_copy(fetch: Fetch) -> None:
                assert fetch.source is not None
                log.log(level, "copy %s -> %s (same content as %s/%s)", fetch.source,
                           fetch.target, bucket, fetch.obj.key)
                os.makedirs(os.path.dirname(fetch.target) or ".", exist_ok=True)
                temp = f"{fetch.target}.{os.getpid()}.{threading.get_ident()}"
                try:
                    shutil.copyfile(fetch.source, temp)
                    os.replace(temp, fetch.target)
                finally:
                    if os.path.exists(temp):
                        os.remove(temp)
                finish(fetch, fetch.obj.etag)

            def cancel() -> None:
                if manager is not None:
                    manager.shutdown(cancel=True)

            _run_all(pool, [partial(download, f) for f in plan.download], cancel)
            _run_all(pool, [partial(local_copy, f) for f in plan.local_copy], cancel)
    finally:
        etags.save()
