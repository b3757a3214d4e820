"""An instance's workdir against S3: resources in (again on refresh), results and snapshots out.

Used by the runner (:mod:`qcompute.server.runner`); needs only the spec and boto3, imported
lazily when the spec uses S3. Every method may be called from the runner's main thread or its
control thread; the S3 client is shared (boto3 clients are thread-safe).

The command may change its workdir while the runner reads or writes it (snapshots, resource
refreshes): every path is opened one component at a time below the workdir, never following a
symbolic link, so a link swapped in cannot lead the runner outside. Resource files arrive
executable, as on Qarnot (published samples run ``./script.sh`` straight from a bucket).

A result upload that fails is tried again, only for the files not uploaded yet, with backoff,
within the spec's bound (:meth:`InstanceFiles.upload_results`); a file whose name cannot be an
S3 key (not UTF-8, or a key over 1,024 bytes) is never sent, and named. Working directories are
removed with :func:`remove_workdir` and :func:`sweep`.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Iterator, Optional

from qcompute.server.executors.base import InstanceSpec, SnapshotRequest

__all__ = ["InfraError", "InstanceFiles", "ResultsUpload", "SnapshotResult", "compile_regex",
           "make_workdir", "reason_of", "remove_workdir", "sweep"]

log = logging.getLogger(__name__)

_TRANSFER_THREADS = 8
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RESOURCE_MODE = 0o755
_MAX_REPORTED_KEYS = 20  # SnapshotDone.keys stays short
_MAX_NAMED_FILES = 10  # an error names this many files, then counts the others
_NAME_CHARS = 120  # a named file is cut to this length
S3_KEY_MAX_BYTES = 1024
_FIRST_PAUSE, _LONGEST_PAUSE = 1.0, 30.0  # seconds between upload tries: doubling, capped


class InfraError(Exception):
    """Not the instance's fault: reported as ``Finished.error``."""


@dataclass
class SnapshotResult:
    files: int = 0
    bytes: int = 0
    size: int = 0
    keys: tuple[str, ...] = ()
    error: Optional[str] = None


@dataclass
class ResultsUpload:
    """How an instance's result upload went."""

    bucket: str
    uploaded: int = 0
    tries: int = 0
    seconds: float = 0.0
    pending: list[str] = field(default_factory=list)  # not uploaded, though they could be
    refused: list[tuple[str, str]] = field(default_factory=list)  # (name, why): never sent
    last_error: Optional[str] = None

    @property
    def error(self) -> Optional[str]:
        """What did not make it, for ``Finished.error``; None when every file did."""
        parts = []
        if self.pending:
            total = self.uploaded + len(self.pending)
            parts.append(
                f"results upload to s3://{self.bucket} failed after {self.tries} "
                f"{'try' if self.tries == 1 else 'tries'} in {self.seconds:.0f} s: "
                f"{len(self.pending)} of {_files(total)} not uploaded: {_names(self.pending)}; "
                f"last error: {self.last_error}")
        if self.refused:
            parts.append(f"{_files(len(self.refused))} cannot be stored in S3: "
                         + _names(f"{name} ({why})" for name, why in self.refused))
        return "; ".join(parts) or None


def compile_regex(name: str, pattern: Optional[str]) -> Optional[re.Pattern]:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as exc:
        raise InfraError(f"invalid {name} regular expression {pattern!r}: {exc}") from exc


class InstanceFiles:
    def __init__(self, spec: InstanceSpec, workdir: str, cancel: threading.Event) -> None:
        self.spec, self.workdir, self.cancel = spec, workdir, cancel
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._downloaded: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) as fetched
        self._fetched: dict[str, tuple[str, str, str]] = {}  # path -> (bucket, key, etag)
        self._sent: dict[tuple[str, str], tuple[int, int]] = {}  # (bucket, key) -> (size, mtime)

    def s3(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        access = self.spec.s3
        if access is None:
            raise InfraError("the instance uses S3 but its spec has no S3 access")
        import boto3

        from qcompute._storage import client_config, no_continue_for_empty_body

        client = boto3.session.Session().client(
            "s3", endpoint_url=access.endpoint_url, aws_access_key_id=access.access_key,
            aws_secret_access_key=access.secret_key, region_name=access.region,
            config=client_config(retry_count=5,  # as the SDK: rides out a storage restart
                                 max_pool_connections=4 * _TRANSFER_THREADS))
        client.meta.events.register("before-call.s3", no_continue_for_empty_body)
        return client

    # -- resources in -----------------------------------------------------------------------

    def download(self, *, refresh: bool = False) -> int:
        """Fetch the resources; with ``refresh``, only keys that are new or whose ETag changed
        since they were fetched (nothing is deleted). Returns the number of files fetched."""
        client = self.s3()
        files: dict[str, tuple[str, str, str]] = {}  # local path -> (bucket, key, etag)
        for res in self.spec.resources:
            for key, etag in self._list(res.bucket, res.prefix):
                if key.endswith("/"):
                    continue
                rel = key[len(res.strip_prefix):] if key.startswith(res.strip_prefix) else key
                path = self._local_path(rel, res.bucket, key)
                if path:
                    files[path] = (res.bucket, key, etag)  # later buckets win
        if refresh:
            files = {p: src for p, src in files.items() if self._fetched.get(p) != src}

        def fetch(item: tuple[str, tuple[str, str, str]]) -> bool:
            path, (bucket, key, _etag) = item
            if self.cancel.is_set():
                return False
            try:
                self._download_to(os.path.relpath(path, self.workdir), client, bucket, key)
            except Exception as exc:
                raise InfraError(
                    f"download of s3://{bucket}/{key} failed: {reason_of(exc)}") from exc
            st = os.stat(path, follow_symlinks=False)
            self._downloaded[path] = (st.st_size, st.st_mtime_ns)
            self._fetched[path] = item[1]
            return True

        # changed files are replaced before new ones appear: a command that waits for a new
        # file then reads the others sees them all refreshed
        changed = [item for item in files.items() if item[0] in self._fetched]
        added = [item for item in files.items() if item[0] not in self._fetched]
        return sum(_parallel(fetch, changed)) + sum(_parallel(fetch, added))

    def _download_to(self, rel: str, client: Any, bucket: str, key: str) -> None:
        """Fetch into a temporary file beside ``rel``, then rename it over ``rel``."""
        parent, name = os.path.split(rel)
        dir_fd = _open_dir(self.workdir, parent, create=True)
        partial = f".{name}.qcompute-{threading.get_ident()}"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, _RESOURCE_MODE, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as handle:
                    os.fchmod(handle.fileno(), _RESOURCE_MODE)
                    client.download_fileobj(bucket, key, handle)
                os.rename(partial, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(partial, dir_fd=dir_fd)
                raise
        finally:
            os.close(dir_fd)

    def _list(self, bucket: str, prefix: str) -> list[tuple[str, str]]:
        try:
            pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix=prefix)
            return [(obj["Key"], obj.get("ETag", "")) for page in pages
                    for obj in page.get("Contents", ())]
        except Exception as exc:
            raise InfraError(f"listing s3://{bucket}/{prefix} failed: {exc}") from exc

    def _local_path(self, rel: str, bucket: str, key: str) -> Optional[str]:
        parts = [part for part in rel.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise InfraError(f"resource s3://{bucket}/{key} would escape the working directory")
        return os.path.join(self.workdir, *parts) if parts else None

    # -- results out ------------------------------------------------------------------------

    def upload_results(self, whitelist: Optional[re.Pattern], blacklist: Optional[re.Pattern],
                       note: Callable[[str], None] = lambda _: None) -> ResultsUpload:
        """Upload every result file to the result bucket. A failed upload is tried again, only
        for the files not uploaded yet, after a pause that doubles (1 s, 2 s ... 30 s), until
        ``result_upload_attempts`` tries in all, no try starting later than
        ``result_upload_seconds`` after the first one failed; ``note`` hears of each pause. A
        cancel stops the tries (and, unless results are uploaded on cancel, the upload). Never
        raises for a file: the outcome says which did not make it."""
        bucket, prefix = self.spec.result_bucket or "", self.spec.results_prefix
        outcome = ResultsUpload(f"{bucket}/{prefix}")
        todo: dict[str, str] = {}  # relative path -> key
        for _path, rel, _st in self.result_files(whitelist, blacklist):
            why = _unstorable_key(prefix + rel)
            if why:
                outcome.refused.append((_shown(rel), why))
            else:
                todo[rel] = prefix + rel
        if not todo:
            return outcome
        client, started, deadline = self.s3(), time.monotonic(), None
        stop_on_cancel = not self.spec.upload_results_on_cancel
        pause = _FIRST_PAUSE

        def put(item: tuple[str, str]) -> Optional[str]:
            rel, key = item
            if stop_on_cancel and self.cancel.is_set():
                return "the instance was cancelled"
            try:
                self._upload_from(rel, client, bucket, key)
            except Exception as exc:
                return f"upload of s3://{bucket}/{key} failed: {reason_of(exc)}"
            return None

        while True:
            outcome.tries += 1
            errors = dict(zip(todo, _parallel(put, todo.items())))
            failed = {rel: todo[rel] for rel, error in errors.items() if error}
            outcome.uploaded += len(todo) - len(failed)
            outcome.seconds = time.monotonic() - started
            todo = failed
            if not todo or (stop_on_cancel and self.cancel.is_set()):
                return outcome  # done, or cancelled: what was not sent is not wanted
            outcome.last_error = next(error for error in errors.values() if error)
            if deadline is None:  # the time bound counts from the first failure
                deadline = time.monotonic() + self.spec.result_upload_seconds
            left = deadline - time.monotonic()
            if outcome.tries >= self.spec.result_upload_attempts or left <= 0:
                break
            wait = min(pause, left)
            note(f"{_files(len(todo))} not uploaded yet ({outcome.last_error}); "
                 f"trying again in {wait:.0f} s (try {outcome.tries + 1} of at most "
                 f"{self.spec.result_upload_attempts})")
            if self.cancel.wait(wait):
                if stop_on_cancel:
                    return outcome
                break
            pause = min(pause * 2, _LONGEST_PAUSE)
        outcome.pending = sorted(_shown(rel) for rel in todo)
        outcome.seconds = time.monotonic() - started
        return outcome

    def snapshot(self, request: SnapshotRequest) -> SnapshotResult:
        """Upload the result files changed (size, mtime) since the last snapshot upload to the
        same bucket and key. Errors are returned in the result, never raised."""
        result = SnapshotResult()
        try:
            whitelist = compile_regex("snapshot whitelist", request.whitelist)
            blacklist = compile_regex("snapshot blacklist", request.blacklist)
            todo, refused = [], []
            for path, rel, st in self.result_files(whitelist, blacklist):
                key, seen = request.prefix + rel, (st.st_size, st.st_mtime_ns)
                why = _unstorable_key(key)
                if why:
                    refused.append(f"{_shown(rel)} ({why})")
                elif self._sent.get((request.bucket, key)) != seen:
                    todo.append((path, key, seen))
            result.size = sum(seen[0] for _, _, seen in todo)
            client, lock, keys = self.s3(), threading.Lock(), []

            def put(item: tuple[str, str, tuple[int, int]]) -> None:
                path, key, seen = item
                if self.cancel.is_set():
                    raise InfraError("the instance was cancelled")
                try:
                    self._upload_from(os.path.relpath(path, self.workdir), client,
                                      request.bucket, key)
                except Exception as exc:
                    raise InfraError(
                        f"upload of s3://{request.bucket}/{key} failed: {exc}") from exc
                self._sent[(request.bucket, key)] = seen
                with lock:
                    result.files += 1
                    result.bytes += seen[0]
                    keys.append(key)

            try:
                _parallel(put, todo)
            finally:
                result.keys = tuple(sorted(keys)[:_MAX_REPORTED_KEYS])
            if refused:
                result.error = f"{len(refused)} files cannot be stored in S3: {_names(refused)}"
        except InfraError as exc:
            result.error = str(exc)
        except Exception as exc:  # a snapshot never takes the instance down
            log.exception("snapshot %s of %s failed", request.snapshot_id, self.spec.key)
            result.error = f"snapshot failure: {exc!r}"
        return result

    def _upload_from(self, rel: str, client: Any, bucket: str, key: str) -> None:
        """Upload the regular file ``rel`` of the workdir (a link or a special file is not
        uploaded: FileNotFoundError)."""
        parent, name = os.path.split(rel)
        dir_fd = _open_dir(self.workdir, parent, create=False)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise FileNotFoundError(f"{rel} is not a regular file")
            client.upload_fileobj(handle, bucket, key)

    def result_files(self, whitelist: Optional[re.Pattern], blacklist: Optional[re.Pattern]
                     ) -> Iterator[tuple[str, str, os.stat_result]]:
        """Regular files of the workdir, filtered; downloaded resources only if they changed."""
        for root, _dirs, names in os.walk(self.workdir):
            for name in names:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:  # removed by the command meanwhile
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if self._downloaded.get(path) == (st.st_size, st.st_mtime_ns):
                    continue
                rel = os.path.relpath(path, self.workdir)
                if whitelist and not whitelist.search(rel):
                    continue
                if blacklist and blacklist.search(rel):
                    continue
                yield path, rel, st


def make_workdir(root: str, *subdirs: Optional[str]) -> None:
    """Create an instance's working directory ``root``, which must be new or empty, and the
    ``subdirs`` (absolute; None: skipped). InfraError if it cannot be."""
    try:
        for _ in range(3):
            try:
                try:
                    os.mkdir(root)  # the usual case: one system call
                except FileNotFoundError:  # no task directory (yet, or any more)
                    os.makedirs(root, exist_ok=True)
                    _must_be_empty(root)
                except FileExistsError:
                    _must_be_empty(root)
                break
            except FileNotFoundError:  # the task's directory went with another attempt's
                continue
        for subdir in filter(None, subdirs):
            os.makedirs(subdir, exist_ok=True)
    except OSError as exc:
        raise InfraError(f"cannot create working directory {root}: {reason_of(exc)}") from exc


def _must_be_empty(root: str) -> None:
    if os.listdir(root):
        raise InfraError(f"working directory {root} exists and is not empty")


def remove_workdir(path: str, *subdirs: str) -> None:
    """Remove an instance's working directory (``<work>/<task>/<instance>-<attempt>``), and its
    task's directory once no attempt is left in it. Never raises: a failure is logged.
    ``subdirs``, what it usually holds, are first removed as empty directories (a command that
    left them empty costs a system call each)."""
    try:
        for subdir in (*subdirs, path):
            os.rmdir(subdir)
    except OSError:
        _rmtree(path)
    try:
        os.rmdir(os.path.dirname(os.path.abspath(path)))
    except OSError:  # another attempt's directory is still there (or it is gone already)
        pass


def sweep(work_root: str, keep: Collection[str] = ()) -> int:
    """Remove every directory under ``work_root/<task or pool>/`` but those in ``keep`` (the
    working directories of what still runs, and the ``share`` directories of open pools), and
    the task directories left empty; returns how many were removed."""
    kept = {os.path.abspath(path) for path in keep}
    removed = 0
    try:
        tasks = os.scandir(work_root)
    except FileNotFoundError:
        return 0
    with tasks:
        for task in tasks:
            if not task.is_dir(follow_symlinks=False):
                continue
            with os.scandir(task.path) as attempts:
                for attempt in [a.path for a in attempts]:
                    if os.path.abspath(attempt) not in kept:
                        _rmtree(attempt)
                        removed += 1
            try:
                os.rmdir(task.path)
            except OSError:
                pass  # a kept attempt is in it
    return removed


def _rmtree(path: str) -> None:
    """Remove a file or a directory tree, also where the command made directories read-only
    (which stops anyone but root). Never raises: a failure is logged."""
    try:
        if not os.path.isdir(path) or os.path.islink(path):
            os.unlink(path)
            return
        try:
            shutil.rmtree(path)
        except PermissionError:
            _make_writable(path)
            shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove working directory %s: %s", path, exc)


def _make_writable(top: str) -> None:
    os.chmod(top, 0o700)
    for root, dirs, _files in os.walk(top):  # top-down: a directory is opened after its chmod
        for name in dirs:
            directory = os.path.join(root, name)
            if not os.path.islink(directory):  # chmod follows links
                os.chmod(directory, 0o700)


def _unstorable_key(key: str) -> Optional[str]:
    """Why ``key`` (from a file name) cannot be an S3 key, or None."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    return f"its key is over {S3_KEY_MAX_BYTES:,} bytes" if size > S3_KEY_MAX_BYTES else None


def _shown(name: str) -> str:
    """A file name for an error message: quoted and escaped (its bytes when not UTF-8), cut."""
    try:
        name.encode("utf-8")
        shown = repr(name)
    except UnicodeEncodeError:
        shown = repr(os.fsencode(name))
    return shown if len(shown) <= _NAME_CHARS else shown[:_NAME_CHARS - 1] + "…"


def _files(count: int) -> str:
    return f"{count} result file{'' if count == 1 else 's'}"


def _names(names: Iterable[str]) -> str:
    """The first names, then how many more."""
    names = list(names)
    more = len(names) - _MAX_NAMED_FILES
    return ", ".join(names[:_MAX_NAMED_FILES]) + (f" and {more} more" if more > 0 else "")


def reason_of(exc: BaseException) -> str:
    """An error's reason, plainly for a full disk."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the node's disk for the working directory"
    return str(exc)


def _open_dir(root: str, rel: str, *, create: bool) -> int:
    """A descriptor of the directory ``rel`` below ``root``, walked without following links
    (created on the way with ``create``)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in (p for p in rel.split("/") if p not in ("", ".")):
            if part == "..":
                raise InfraError(f"{rel!r} would escape the working directory")
            if create:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _parallel(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``fn`` over ``items`` on a thread pool; the first error cancels what has not started."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(min(_TRANSFER_THREADS, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
