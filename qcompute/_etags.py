"""Local files and their ETags: what the sync engine (:mod:`qcompute._sync`) knows of this side.

* :func:`scan_files` / :func:`scan_directory`: local files as :class:`LocalFile` (key, path, size,
  mtime), keys as POSIX paths whatever the platform.
* :class:`EtagCache`: the ETags of local files, kept on disk (SQLite) and keyed on the absolute
  path, the size and the modification time, so an unchanged file is never hashed twice.
* :class:`Etags`: the ETags one call needs, from the cache or hashed in parallel.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat as stat_module
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

from ._objects import MULTIPART_SIZE, etag_for_label, normalize_key

__all__ = ["CACHE_ENV", "EtagCache", "CacheRow", "default_cache_path", "LocalFile", "Etags",
           "scan_files", "scan_directory"]

logger = logging.getLogger(__name__)

CACHE_ENV = "QCOMPUTE_CACHE_DIR"  # where the ETag cache lives; empty: no cache
CACHE_FILE = "etags.sqlite3"
MAX_CACHE_ENTRIES = 200_000
HASH_WORKERS = 16
_DAY_NS = 86_400 * 10 ** 9


# ----------------------------------------------------------------------------- the ETag cache
def default_cache_path() -> Optional[Path]:
    """``$QCOMPUTE_CACHE_DIR/etags.sqlite3`` (an empty value turns the cache off), else the same
    file under ``platformdirs.user_cache_dir("qcompute")``."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) / CACHE_FILE if configured.strip() else None
    import platformdirs

    return Path(platformdirs.user_cache_dir("qcompute")) / CACHE_FILE


@dataclass(frozen=True)
class CacheRow:
    size: int
    mtime_ns: int
    checked_ns: int  # when the file was seen with this size and mtime, before it was read
    etags: dict[str, str]  # etag_label -> ETag
    used_ns: int = 0


class EtagCache:
    """ETags of local files in a small SQLite file: absolute path → size, mtime, ETags.

    Best effort by design: a missing, locked, unreadable or corrupt file never fails a
    transfer. A corrupt file is deleted and started again; otherwise the cache is skipped for
    the call. The oldest entries go when there are more than ``max_entries``.
    """

    def __init__(self, path: Optional[Path], max_entries: int = MAX_CACHE_ENTRIES) -> None:
        self.path = path
        self.max_entries = max_entries
        self._db: Optional[sqlite3.Connection] = None
        self._off = path is None

    def _connect(self) -> Optional[sqlite3.Connection]:
        if self._db is not None or self._off:
            return self._db
        assert self.path is not None
        for attempt in (1, 2):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(str(self.path), timeout=5, isolation_level=None)
                db.execute("PRAGMA synchronous=OFF")
                db.execute("CREATE TABLE IF NOT EXISTS etags (path TEXT PRIMARY KEY, size INTEGER,"
                           " mtime_ns INTEGER, checked_ns INTEGER, etags TEXT, used_ns INTEGER)"
                           " WITHOUT ROWID")
                db.execute("CREATE INDEX IF NOT EXISTS etags_used ON etags (used_ns)")
                self._db = db
                return db
            except sqlite3.OperationalError as exc:  # locked, read-only, no space: skip it
                self._give_up(exc)
            except sqlite3.DatabaseError as exc:  # "file is not a database": start again
                if attempt == 2:
                    self._give_up(exc)
                else:
                    logger.warning("ETag cache %s is corrupt (%s): starting a new one",
                                   self.path, exc)
                    self._remove()
            except OSError as exc:
                self._give_up(exc)
            if self._off:
                break
        return None

    def _remove(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.remove(f"{self.path}{suffix}")
            except OSError:
                pass

    def _give_up(self, exc: BaseException) -> None:
        logger.warning("ETag cache %s unusable (%s): files are hashed without it", self.path, exc)
        self._off = True
        self.close()

    def load(self, paths: Iterable[str]) -> dict[str, CacheRow]:
        """The rows of these absolute paths (missing ones are left out)."""
        db = self._connect()
        found: dict[str, CacheRow] = {}
        if db is None:
            return found
        wanted = list(paths)
        try:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = db.execute(
                    "SELECT path, size, mtime_ns, checked_ns, etags, used_ns FROM etags WHERE path"
                    f" IN ({','.join('?' * len(chunk))})", chunk)
                for path, size, mtime_ns, checked_ns, etags, used_ns in rows:
                    try:
                        decoded = json.loads(etags)
                    except ValueError:
                        continue
                    if isinstance(decoded, dict):
                        found[path] = CacheRow(int(size), int(mtime_ns), int(checked_ns),
                                               decoded, int(used_ns or 0))
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            self._handle(exc)
        return found

    def save(self, rows: Mapping[str, CacheRow], touched: Iterable[str] = ()) -> None:
        """Write ``rows`` and mark ``touched`` paths as used now, in one transaction; prune."""
        db = self._connect()
        touched = list(touched)
        if db is None or (not rows and not touched):
            return
        now = time.time_ns()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT OR REPLACE INTO etags VALUES (?, ?, ?, ?, ?, ?)",
                [(path, r.size, r.mtime_ns, r.checked_ns, json.dumps(r.etags), now)
                 for path, r in rows.items()])
            db.executemany("UPDATE etags SET used_ns = ? WHERE path = ?",
                           [(now, path) for path in touched])
            if rows:
                (count,) = db.execute("SELECT count(*) FROM etags").fetchone()
                extra = count - self.max_entries
                if extra > 0:  # drop the least recently used tenth more, not one row per call
                    db.execute("DELETE FROM etags WHERE path IN (SELECT path FROM etags ORDER BY "
                               "used_ns LIMIT ?)", (extra + self.max_entries // 10,))
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            try:
                db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass
            self._handle(exc)

    def _handle(self, exc: BaseException) -> None:
        if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, disk full: skip
            logger.warning("ETag cache %s not usable now (%s)", self.path, exc)
            return
        logger.warning("ETag cache %s is corrupt (%s): it will be started again", self.path, exc)
        self.close()
        self._remove()
        self._off = True

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


# ----------------------------------------------------------------------------- local files
@dataclass(frozen=True)
class LocalFile:
    """A local file as seen once, before it is read: its object key, path, size and mtime."""

    key: str
    path: str
    size: int
    mtime_ns: int
    abspath: str
    seen_ns: int

    @classmethod
    def from_stat(cls, key: str, path: str, st: os.stat_result, seen_ns: int) -> "LocalFile":
        return cls(key, path, st.st_size, st.st_mtime_ns, os.path.abspath(path), seen_ns)


def scan_files(files: Mapping[str, Union[str, "os.PathLike[str]"]],
               prefix: Optional[str] = None) -> dict[str, LocalFile]:
    """``{key: local path}`` → ``{key: LocalFile}``; keys become POSIX keys under ``prefix``.

    Raises:
        ValueError: an empty key or a folder key (ending in ``/``).
        FileNotFoundError: a path that is not a regular file.
    """
    seen = time.time_ns()
    scanned: dict[str, LocalFile] = {}
    for raw_key, raw_path in files.items():
        key = normalize_key(f"{prefix}/{raw_key}" if prefix else raw_key)
        if not key or key.endswith("/"):
            raise ValueError(f"not a file key: {raw_key!r}")
        path = os.fspath(raw_path)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise FileNotFoundError(f"no such file: {path}") from exc
        if not stat_module.S_ISREG(st.st_mode):
            raise FileNotFoundError(f"not a regular file: {path}")
        scanned[key] = LocalFile.from_stat(key, path, st, seen)
    return scanned


def scan_directory(root: Union[str, "os.PathLike[str]"],
                   prefix: Optional[str] = None) -> dict[str, LocalFile]:
    """Every regular file under ``root`` (symlinked files followed, symlinked folders not), keyed
    ``prefix/relative/posix/path`` whatever the platform's separator."""
    top = os.fspath(root)
    if not os.path.isdir(top):
        raise NotADirectoryError(f"not a directory: {top}")
    seen = time.time_ns()
    scanned: dict[str, LocalFile] = {}
    todo: list[tuple[str, str]] = [(top, "")]
    while todo:
        folder, relative = todo.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = f"{relative}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    todo.append((entry.path, name + "/"))
                    continue
                try:
                    st = entry.stat()
                except OSError:  # a dangling link, or gone since the listing
                    continue
                if stat_module.S_ISREG(st.st_mode):
                    key = normalize_key(f"{prefix}/{name}" if prefix else name)
                    scanned[key] = LocalFile.from_stat(key, entry.path, st, seen)
    return dict(sorted(scanned.items()))


def _racy(mtime_ns: int, checked_ns: int) -> bool:
    """Could the file change again without changing its mtime? True when the mtime is within a
    tick of the moment it was read (2 s on filesystems with whole-second times)."""
    window = 2 * 10 ** 9 if mtime_ns % 10 ** 9 == 0 else 50 * 10 ** 6
    return mtime_ns >= checked_ns - window


class Etags:
    """The ETags of the local files of one call: from the cache, else computed in parallel.

    ``computed`` counts the files hashed (the cache hits are free).
    """

    def __init__(self, cache: Optional[EtagCache],
                 etag_of: Callable[[str, str], str] = etag_for_label,
                 workers: int = HASH_WORKERS) -> None:
        self._cache = cache
        self._etag_of = etag_of
        self._workers = workers
        self._known: dict[str, dict[str, str]] = {}
        self._valid: dict[str, tuple[int, int, int]] = {}  # abspath -> size, mtime, checked
        self._dirty: dict[str, CacheRow] = {}
        self._touched: list[str] = []
        self._lock = threading.Lock()
        self.computed = 0

    def preload(self, files: Iterable[LocalFile]) -> None:
        """Read the cache rows of ``files`` (one query per 500) and keep the still valid ones."""
        files = list(files)
        if self._cache is None or not files:
            return
        rows = self._cache.load(f.abspath for f in files)
        stale_use = time.time_ns() - _DAY_NS
        for f in files:
            row = rows.get(f.abspath)
            if row is None or (row.size, row.mtime_ns) != (f.size, f.mtime_ns) or \
                    _racy(row.mtime_ns, row.checked_ns):
                continue
            self._known[f.abspath] = dict(row.etags)
            self._valid[f.abspath] = (row.size, row.mtime_ns, row.checked_ns)
            if row.used_ns < stale_use:
                self._touched.append(f.abspath)

    def get(self, f: LocalFile, label: str) -> Optional[str]:
        return self._known.get(f.abspath, {}).get(label)

    def resolve(self, needs: Iterable[tuple[LocalFile, str]]) -> None:
        """Make sure each (file, label) ETag is known: hash the missing ones, in parallel."""
        todo = list({(f.abspath, label): (f, label) for f, label in needs
                     if self.get(f, label) is None}.values())
        if not todo:
            return

        def one(item: tuple[LocalFile, str]) -> None:
            f, label = item
            self.record(f, label, self._etag_of(f.path, label), f.seen_ns)

        if len(todo) == 1 or sum(f.size for f, _ in todo) < 4 * MULTIPART_SIZE:
            for item in todo:
                one(item)
        else:  # hashlib releases the GIL on large buffers: big files hash on every core
            with ThreadPoolExecutor(max_workers=min(self._workers, os.cpu_count() or 2)) as pool:
                list(pool.map(one, todo))
        self.computed += len(todo)

    def record(self, f: LocalFile, label: str, etag: str, checked_ns: int) -> None:
        """Remember that ``f``, as scanned, has ``etag`` for ``label``."""
        if not etag:
            return
        with self._lock:
            etags = self._known.setdefault(f.abspath, {})
            if self._valid.get(f.abspath, (f.size, f.mtime_ns))[:2] != (f.size, f.mtime_ns):
                etags.clear()
            etags[label] = etag
            self._valid[f.abspath] = (f.size, f.mtime_ns, checked_ns)
            self._dirty[f.abspath] = CacheRow(f.size, f.mtime_ns, checked_ns, dict(etags))

    def record_if_unchanged(self, f: LocalFile, label: str, etag: str) -> None:
        """Like :meth:`record`, for a file just uploaded: only if it still looks as scanned."""
        try:
            st = os.stat(f.path)
        except OSError:
            return
        if (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns):
            self.record(f, label, etag, f.seen_ns)

    def save(self) -> None:
        """Write what was learnt to the cache (one transaction) and close it."""
        if self._cache is None:
            return
        try:
            self._cache.save(self._dirty, self._touched)
        finally:
            self._cache.close()
        self._dirty, self._touched = {}, []
