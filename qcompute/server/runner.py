"""Runs ONE instance anywhere: workdir, resources in, command, output, results out.

Needs only the spec and boto3 (imported lazily, only when the spec uses S3), no database and no
HTTP server, so the local executor and a Ray task run the same code:

* in-process: :func:`run_instance` (spec, emit, cancel_event) -> Finished;
* as a process: ``python -m qcompute.server.runner`` reads one InstanceSpec JSON on stdin, writes
  the events as JSON lines on stdout and exits 0 after the Finished event. SIGTERM (or SIGINT)
  cancels the instance.
* as a warm worker: ``python -m qcompute.server.runner --serve`` (:func:`serve`) runs instances
  one after another, one spec JSON line each, until EOF on stdin (see :func:`serve`).

The command runs as ``sh -c <command>`` in a new session (its own process group), with
PR_SET_PDEATHSIG so it dies with the thread that started it, and a watchdog process that kills
the whole group if the runner dies first. On cancel the group gets SIGTERM, then SIGKILL after
``kill_grace_seconds``; once the command ends, whatever is left of its group is killed.
"""
from __future__ import annotations

import codecs
import ctypes
import logging
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Callable, Iterable, Iterator, Optional

from qcompute.server.executors.base import (ExecutorEvent, Finished, InstanceSpec, Output, Phase,
                                            event_to_json)

__all__ = ["run_instance", "pdeathsig_preexec", "main", "serve", "ACCEPTED"]

log = logging.getLogger(__name__)

_BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME",
             "SHELL")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_POLL_SECONDS = 0.05  # how often the wait loop looks at the process and the cancel flag
_DRAIN_SECONDS = 1.0  # output still read after the command's group is gone
_READ_BYTES = 65536
_TRANSFER_THREADS = 8
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # the already-loaded C library: no I/O


def pdeathsig_preexec(report_group_to: Optional[int] = None) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that spawned it ends (Linux).

    Call it in the spawning thread; the thread must outlive the child (see prctl(2)). With
    ``report_group_to`` (a pipe's write end), the child also writes its process group id there
    before it runs any code of its own, so a watchdog knows the group from the first instant.
    """
    parent = os.getpid()

    def preexec() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        if report_group_to is not None:
            os.write(report_group_to, b"%d\n" % os.getpgrp())

    return preexec


class _InfraError(Exception):
    """Not the instance's fault: reported as ``Finished.error``."""


def run_instance(spec: InstanceSpec, emit: Callable[[ExecutorEvent], None],
                 cancel_event: threading.Event) -> Finished:
    """Run one instance, calling ``emit`` for each event; the last one is the returned Finished."""
    finished = _InstanceRun(spec, emit, cancel_event).execute()
    emit(finished)
    return finished


class _InstanceRun:
    def __init__(self, spec: InstanceSpec, emit: Callable[[ExecutorEvent], None],
                 cancel: threading.Event) -> None:
        self.spec, self.emit, self.cancel = spec, emit, cancel
        self.workdir = os.path.abspath(spec.workdir)
        self.exit_code: Optional[int] = None
        self.exec_time = 0.0
        self.peak_kb = 0
        self.uploaded = 0
        self._client: Any = None
        self._pgid: Optional[int] = None
        self._downloaded: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns)

    def execute(self) -> Finished:
        started = time.monotonic()
        error: Optional[str] = None
        created = ran = False
        try:
            whitelist = _compile("results_whitelist", self.spec.results_whitelist)
            blacklist = _compile("results_blacklist", self.spec.results_blacklist)
            self._make_workdir()
            created = True
            if self.spec.resources and not self.cancel.is_set():
                self.emit(Phase(self.spec.key, "downloading"))
                self._download()
            if not self.cancel.is_set():
                ran = True
                self._run_command()
            if self.spec.result_bucket and ran and (
                    not self.cancel.is_set() or self.spec.upload_results_on_cancel):
                self.emit(Phase(self.spec.key, "uploading"))
                self._upload(whitelist, blacklist)
        except _InfraError as exc:
            error = str(exc)
        except Exception as exc:  # never die silently: report it as an infrastructure error
            log.exception("runner failure for %s", self.spec.key)
            error = f"runner failure: {exc!r}"
        finally:
            if created:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return Finished(self.spec.key, exit_code=self.exit_code, error=error,
                        cancelled=self.cancel.is_set(), exec_time_sec=round(self.exec_time, 3),
                        wall_time_sec=round(time.monotonic() - started, 3),
                        peak_memory_mb=round(self.peak_kb / 1024), results_uploaded=self.uploaded)

    def _make_workdir(self) -> None:
        try:
            os.makedirs(self.workdir, exist_ok=True)
            if os.listdir(self.workdir):
                raise _InfraError(f"working directory {self.workdir} exists and is not empty")
        except OSError as exc:
            raise _InfraError(f"cannot create working directory {self.workdir}: {exc}") from exc

    # -- the command ------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in _BASE_ENV if name in os.environ}
        env.setdefault("PATH", _DEFAULT_PATH)
        env.update(self.spec.env)
        env["QARNOT_RESOURCES_DIRECTORY"] = env["QARNOT_RESULTS_DIRECTORY"] = self.workdir
        return env

    def _run_command(self) -> None:
        watchdog, lifeline = _start_watchdog()
        try:
            self._run_watched(lifeline)
        finally:
            watchdog.kill()  # first: with its lifeline closed it would signal a stale group id
            watchdog.wait()
            os.close(lifeline)

    def _run_watched(self, lifeline: int) -> None:
        try:
            proc = subprocess.Popen(
                ["sh", "-c", self.spec.command], cwd=self.workdir, env=self._env(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=pdeathsig_preexec(report_group_to=lifeline))
        except OSError as exc:
            raise _InfraError(f"cannot start the command: {exc}") from exc
        self._pgid = proc.pid  # a new session: the group id is the pid
        started = time.monotonic()
        pump = _OutputPump({"stdout": proc.stdout, "stderr": proc.stderr},
                           lambda stream, text: self.emit(Output(self.spec.key, stream, text)),
                           exit_of=proc.pid)
        try:
            self.emit(Phase(self.spec.key, "running"))
            self._wait(proc, pump)
        finally:
            self._signal_group(signal.SIGKILL)  # nothing of the command outlives it
            self._pgid = None
            pump.drain(time.monotonic() + _DRAIN_SECONDS)
            pump.close()
            self.exec_time = time.monotonic() - started

    def _wait(self, proc: subprocess.Popen, pump: "_OutputPump") -> None:
        """Stream output until the command ends; on cancel, TERM then KILL its group."""
        kill_at: Optional[float] = None
        while True:
            pump.pump(_POLL_SECONDS)
            now = time.monotonic()
            if kill_at is None and self.cancel.is_set():
                self._signal_group(signal.SIGTERM)
                kill_at = now + self.spec.kill_grace_seconds
            elif kill_at is not None and now >= kill_at:
                self._signal_group(signal.SIGKILL)
            if self.exit_code is None:
                self._reap(proc)
            # Ended; after a cancel, the rest of the group may finish within the grace period.
            if self.exit_code is not None and (
                    kill_at is None or now >= kill_at or not self._group_alive()):
                return

    def _reap(self, proc: subprocess.Popen) -> None:
        """wait4: the exit code, and the peak RSS of the command and the children it waited for."""
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: the code is whatever Popen knows
            self.exit_code = proc.poll()
            return
        if pid:
            self.exit_code = proc.returncode = os.waitstatus_to_exitcode(status)
            self.peak_kb = usage.ru_maxrss

    def _signal_group(self, sig: int) -> None:
        if self._pgid is not None:
            try:
                os.killpg(self._pgid, sig)
            except ProcessLookupError:
                pass

    def _group_alive(self) -> bool:
        """Whether a process of the group still runs. Zombies do not count: orphans wait for
        init to reap them, and some inits are slow to."""
        try:
            os.killpg(self._pgid, 0)  # type: ignore[arg-type]
        except ProcessLookupError:
            return False
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/stat") as stat_file:  # pid (comm) state ppid pgrp ...
                    state, _ppid, pgrp = stat_file.read().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):  # not a process, or gone meanwhile
                continue
            if int(pgrp) == self._pgid and state != "Z":
                return True
        return False

    # -- S3 ---------------------------------------------------------------------------------

    def _s3(self) -> Any:
        if self._client is None:
            access = self.spec.s3
            if access is None:
                raise _InfraError("the instance uses S3 but its spec has no S3 access")
            import boto3
            from botocore.config import Config

            from qcompute._storage import no_continue_for_empty_body

            self._client = boto3.session.Session().client(
                "s3", endpoint_url=access.endpoint_url, aws_access_key_id=access.access_key,
                aws_secret_access_key=access.secret_key, region_name=access.region,
                config=Config(max_pool_connections=4 * _TRANSFER_THREADS,
                              retries={"mode": "standard", "max_attempts": 3}))
            self._client.meta.events.register("before-call.s3", no_continue_for_empty_body)
        return self._client

    def _download(self) -> None:
        client = self._s3()
        files: dict[str, tuple[str, str]] = {}  # local path -> (bucket, key); later buckets win
        for res in self.spec.resources:
            for key in self._list_keys(res.bucket, res.prefix):
                if key.endswith("/"):
                    continue
                rel = key[len(res.strip_prefix):] if key.startswith(res.strip_prefix) else key
                path = self._local_path(rel, res.bucket, key)
                if path:
                    files[path] = (res.bucket, key)

        def fetch(item: tuple[str, tuple[str, str]]) -> None:
            path, (bucket, key) = item
            if self.cancel.is_set():
                return
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                client.download_file(bucket, key, path)
            except Exception as exc:
                raise _InfraError(f"download of s3://{bucket}/{key} failed: {exc}") from exc
            st = os.stat(path)
            self._downloaded[path] = (st.st_size, st.st_mtime_ns)

        _parallel(fetch, files.items())

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        try:
            pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
            return [obj["Key"] for page in pages for obj in page.get("Contents", ())]
        except Exception as exc:
            raise _InfraError(f"listing s3://{bucket}/{prefix} failed: {exc}") from exc

    def _local_path(self, rel: str, bucket: str, key: str) -> Optional[str]:
        parts = [part for part in rel.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise _InfraError(f"resource s3://{bucket}/{key} would escape the working directory")
        return os.path.join(self.workdir, *parts) if parts else None

    def _upload(self, whitelist: Optional[re.Pattern], blacklist: Optional[re.Pattern]) -> None:
        bucket, client = self.spec.result_bucket, self._s3()
        stop_on_cancel = not self.spec.upload_results_on_cancel

        def put(item: tuple[str, str]) -> bool:
            path, rel = item
            if stop_on_cancel and self.cancel.is_set():
                return False
            key = self.spec.results_prefix + rel
            try:
                client.upload_file(path, bucket, key)
            except Exception as exc:
                raise _InfraError(f"upload of s3://{bucket}/{key} failed: {exc}") from exc
            return True

        self.uploaded = sum(_parallel(put, self._result_files(whitelist, blacklist)))

    def _result_files(self, whitelist: Optional[re.Pattern],
                      blacklist: Optional[re.Pattern]) -> Iterator[tuple[str, str]]:
        """Regular files of the workdir, filtered; downloaded resources only if they changed."""
        for root, _dirs, names in os.walk(self.workdir):
            for name in names:
                path = os.path.join(root, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if self._downloaded.get(path) == (st.st_size, st.st_mtime_ns):
                    continue
                rel = os.path.relpath(path, self.workdir)
                if whitelist and not whitelist.search(rel):
                    continue
                if blacklist and blacklist.search(rel):
                    continue
                yield path, rel


class _OutputPump:
    """Reads pipes as chunks arrive and hands them on decoded (UTF-8, errors replaced).

    With ``exit_of``, the process's pidfd is watched too, so :meth:`pump` also returns as soon
    as the process exits: waiting never sleeps a fixed time.
    """

    def __init__(self, pipes: dict[str, IO[bytes]], sink: Callable[[str, str], None],
                 exit_of: Optional[int] = None) -> None:
        self._sink = sink
        self._selector = selectors.DefaultSelector()
        for name, pipe in pipes.items():
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._selector.register(pipe, selectors.EVENT_READ, (name, decoder))
        self._pidfd: Optional[int] = None
        if exit_of is not None and hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(exit_of)
                self._selector.register(self._pidfd, selectors.EVENT_READ, None)
            except OSError:  # an old kernel: fall back to a short sleep
                self._pidfd = None

    def pump(self, timeout: float) -> None:
        """Read what arrives within ``timeout``; return early when the process exits."""
        if not self._selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in self._selector.select(timeout):
            if key.data is None:  # the pidfd: the process exited; the caller reaps it
                self._selector.unregister(key.fd)
                continue
            name, decoder = key.data
            data = os.read(key.fd, _READ_BYTES)
            text = decoder.decode(data, final=not data)
            if text:
                self._sink(name, text)
            if not data:
                self._selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]

    def drain(self, deadline: float) -> None:
        """Read until every pipe is closed, or the deadline."""
        while self._selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            self.pump(remaining)

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            if key.data is not None:
                key.fileobj.close()  # type: ignore[union-attr]
        if self._pidfd is not None:
            os.close(self._pidfd)
        self._selector.close()


def _start_watchdog() -> tuple[subprocess.Popen, int]:
    """A tiny process that SIGKILLs the command's group if this process dies first.

    PR_SET_PDEATHSIG reaches only the group leader (``sh``): without this, its children would
    outlive a SIGKILLed runner or a crashed server. The watchdog reads the group id from a pipe
    whose write end (returned) only this process holds, then waits for its EOF.
    """
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(["sh", "-c", 'read pgid; read _; kill -KILL "-$pgid"'],
                                    stdin=read_end, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        os.close(write_end)
        raise _InfraError(f"cannot start the watchdog process: {exc}") from exc
    finally:
        os.close(read_end)
    return watchdog, write_end


def _compile(name: str, pattern: Optional[str]) -> Optional[re.Pattern]:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as exc:
        raise _InfraError(f"invalid {name} regular expression {pattern!r}: {exc}") from exc


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


ACCEPTED = '{"kind": "accepted"}'  # serve(): a spec was read; SIGTERM now cancels it
_CANCEL_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _event_writer() -> Callable[[str], None]:
    """Write lines to the real stdout; fd 1 then points to stderr, so a stray print cannot
    corrupt the event stream."""
    events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def write(line: str) -> None:
        events.write(line + "\n")
        events.flush()

    return write


def serve(write: Callable[[str], None]) -> int:
    """Run instances one after another: read a spec JSON line, answer :data:`ACCEPTED`, write
    its events (Finished last), repeat; exit at EOF.

    SIGTERM cancels the current instance. It stays blocked while the worker is idle, and one
    left pending once an instance has ended (a cancel that crossed its Finished) is discarded
    before the next spec is accepted; the executor signals an instance only after its ACCEPTED
    line, so no cancel reaches the wrong instance. Each instance has its own cancel flag, workdir
    and command environment (built from the spec); the worker's cwd and environment never change.
    """
    current = [threading.Event()]  # the cancel flag of the instance being run
    for sig in _CANCEL_SIGNALS:
        signal.signal(sig, lambda *_: current[0].set())
    signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL_SIGNALS)
    stdin = sys.stdin.buffer
    while line := stdin.readline():
        if not line.strip():
            continue
        spec = InstanceSpec.from_json(line.decode())
        while signal.sigtimedwait(_CANCEL_SIGNALS, 0) is not None:
            pass  # stale: meant for the previous instance
        current[0] = cancel = threading.Event()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCEL_SIGNALS)
        try:
            write(ACCEPTED)
            run_instance(spec, lambda event: write(event_to_json(event)), cancel)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL_SIGNALS)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="qcompute-runner %(levelname)s %(name)s: %(message)s")
    write = _event_writer()
    if argv == ["--serve"]:
        return serve(write)
    if argv:
        log.error("usage: python -m qcompute.server.runner [--serve]")
        return 2
    cancel = threading.Event()
    for sig in _CANCEL_SIGNALS:
        signal.signal(sig, lambda *_: cancel.set())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCEL_SIGNALS)  # the LocalExecutor blocks it
    spec = InstanceSpec.from_json(sys.stdin.read())
    run_instance(spec, lambda event: write(event_to_json(event)), cancel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
