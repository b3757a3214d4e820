"""Runs ONE instance anywhere: workdir, resources in, command, output, results out.

Needs only the spec and boto3 (imported lazily, only when the spec uses S3), no database and no
HTTP server, so the local executor and a Ray task run the same code:

* in-process: :func:`run_instance` (spec, emit, cancel_event) -> Finished;
* as a process: ``python -m qcompute.server.runner`` reads one InstanceSpec JSON on stdin, writes
  the events as JSON lines on stdout and exits 0 after the Finished event. SIGTERM (or SIGINT)
  cancels the instance.
* as a warm worker: ``python -m qcompute.server.runner --serve`` (:func:`serve`) runs instances
  one after another, one spec JSON line each, until EOF on stdin (see :func:`serve`); control
  lines on stdin reach the running instance (snapshot now, periodic snapshot, refresh).

While the command runs, a control thread (:mod:`qcompute.server.runner_control`) takes the
snapshots asked for (and the periodic one) and refreshes the resources; S3 transfers live in
:mod:`qcompute.server.runner_files`.

The command is run as a Qarnot node runs it (:mod:`qcompute.server.command`: ``${NAME}``
filled in, split into words, no shell), in the instance's sandbox (:mod:`qcompute.server.sandbox`)
when the worker has one, with PR_SET_PDEATHSIG so it dies with the thread that started it. In the
sandbox, the PID namespace ends whatever the command leaves behind; unsandboxed, a watchdog
process kills the command's group if the runner dies first. On cancel the group gets SIGTERM,
then SIGKILL after ``kill_grace_seconds``; once the command ends, nothing of it is left.
While it runs, :mod:`qcompute.server.runner_telemetry` reports its CPU, memory and network.

An instance costs the worker no thread and no fork of itself: bwrap is started with vfork (no
Python runs in the child), and the wait for the command is one ``select`` on its output pipes
and its pidfd, woken by output, by its exit, by the next telemetry sample or a poll of the
cancel flag.
"""
from __future__ import annotations

import codecs
import ctypes
import json
import logging
import os
import queue
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Callable, Optional

from qcompute.server.command import CommandError, split_command
from qcompute.server.executors.base import (ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                                            Output, Phase, event_to_json)
from qcompute.server.reaper import TAG_ENV
from qcompute.server.runner_control import Controller, InstanceControl
from qcompute.server.runner_files import InfraError as _InfraError
from qcompute.server.runner_files import (InstanceFiles, compile_regex, make_workdir,
                                          remove_workdir)
from qcompute.server.runner_telemetry import InstanceCgroup, Sampler, remove_leftover_cgroups
from qcompute.server.sandbox import JOB, RAMFS, SHARE, TMP, Sandbox, SandboxConfig, SandboxError

__all__ = ["run_instance", "pdeathsig_preexec", "main", "serve", "ACCEPTED"]

log = logging.getLogger(__name__)

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SANDBOX_START_SECONDS = 30.0
SANDBOX_ENV = "QCOMPUTE_SANDBOX"  # the worker's SandboxConfig, as JSON
HEARTBEAT_ENV = "QCOMPUTE_RUNNER_HEARTBEAT"  # serve(): seconds between ALIVE lines; 0: none
_POLL_SECONDS = 0.05  # how often the wait loop looks at the process and the cancel flag
_DRAIN_SECONDS = 1.0  # output still read after the command's group is gone
_READ_BYTES = 65536
_PR_SET_PDEATHSIG = 1
_DISK_FULL_BYTES = 1 << 20  # less free space than this after a failed command: a full disk
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


def run_instance(spec: InstanceSpec, emit: Callable[[ExecutorEvent], None],
                 cancel_event: threading.Event, control: Optional[InstanceControl] = None,
                 sandbox: Optional[Sandbox] = None, taken_at: Optional[float] = None) -> Finished:
    """Run one instance, calling ``emit`` (from more than one thread) for each event; the last
    one is the returned Finished. ``control`` takes snapshot and refresh requests meanwhile;
    with ``sandbox`` (started), the command runs in it. ``taken_at``: when the spec was taken
    (``time.time()``; default: now), the start of the Finished event's timeline."""
    finished = _InstanceRun(spec, emit, cancel_event, control, sandbox, taken_at).execute()
    emit(finished)
    return finished


class _InstanceRun:
    def __init__(self, spec: InstanceSpec, emit: Callable[[ExecutorEvent], None],
                 cancel: threading.Event, control: Optional[InstanceControl] = None,
                 sandbox: Optional[Sandbox] = None, taken_at: Optional[float] = None) -> None:
        self.spec, self.emit, self.cancel, self.sandbox = spec, emit, cancel, sandbox
        self.timeline = {"runner_started": taken_at or time.time()}  # see Finished.timeline
        self.root = os.path.abspath(spec.workdir)
        self.workdir = os.path.join(self.root, "job")  # /job in the sandbox
        self.tmpdir = os.path.join(self.root, "tmp")  # /tmp in the sandbox
        self.exit_code: Optional[int] = None
        self.exec_time = 0.0
        self.peak_kb = 0
        self.uploaded = 0
        self.files = InstanceFiles(spec, self.workdir, cancel)
        self.controller = Controller(spec, control or InstanceControl(), self.files, emit, cancel)
        self._pgid: Optional[int] = None

    def execute(self) -> Finished:
        """Run the instance. Its working directory is removed at the end, unless result files
        that could be uploaded were not (the upload failed after its tries): those stay."""
        started = time.monotonic()
        error: Optional[str] = None
        created = ran = keep = results_failed = False
        try:
            whitelist = compile_regex("results_whitelist", self.spec.results_whitelist)
            blacklist = compile_regex("results_blacklist", self.spec.results_blacklist)
            make_workdir(self.root, self.workdir, self.tmpdir, self.spec.share_dir)
            created = True
            if self.spec.resources and not self.cancel.is_set():
                self.emit(Phase(self.spec.key, "downloading"))
                self.files.download()
            self.controller.start()
            if not self.cancel.is_set():
                ran = True
                self._run_command()
                self._tell_if_disk_full()
            if self.spec.result_bucket and ran and (
                    not self.cancel.is_set() or self.spec.upload_results_on_cancel):
                self.emit(Phase(self.spec.key, "uploading"))
                upload = self.files.upload_results(whitelist, blacklist, self._note)
                self.uploaded, error = upload.uploaded, upload.error
                results_failed, keep = error is not None, bool(upload.pending)
            self.timeline["results_uploaded"] = time.time()
        except (_InfraError, SandboxError) as exc:
            error = str(exc)
        except Exception as exc:  # never die silently: report it as an infrastructure error
            log.exception("runner failure for %s", self.spec.key)
            error = f"runner failure: {exc!r}"
        finally:
            self.controller.close()  # before Finished: no control event may follow it
            if created and not keep:
                remove_workdir(self.root, self.workdir, self.tmpdir)
        return Finished(self.spec.key, exit_code=self.exit_code, error=error,
                        cancelled=self.cancel.is_set(), exec_time_sec=round(self.exec_time, 3),
                        wall_time_sec=round(time.monotonic() - started, 3),
                        peak_memory_mb=round(self.peak_kb / 1024), results_uploaded=self.uploaded,
                        results_failed=results_failed,
                        timeline={**self.timeline, "runner_ended": time.time()})

    def _note(self, text: str) -> None:
        """A line of the runner's own on the instance's stderr."""
        self.emit(Output(self.spec.key, "stderr", f"qcompute: {text}\n"))

    def _tell_if_disk_full(self) -> None:
        """A command that failed on a full disk: say so on its stderr (its exit code stands)."""
        if self.exit_code in (0, None):
            return
        try:
            disk = os.statvfs(self.workdir)
        except OSError:
            return
        if disk.f_bavail * disk.f_frsize < _DISK_FULL_BYTES:
            self._note("the disk of the working directory is full: the command's files may "
                       "be incomplete")

    # -- the command ------------------------------------------------------------------------

    def _paths(self) -> dict[str, str]:
        """Where the instance finds its directories: the sandbox's, or the host's."""
        if self.sandbox is not None:
            return {"TASK_PATH": JOB, "TMP_PATH": TMP, "TMP_RAMFS_PATH": RAMFS}
        return {"TASK_PATH": self.workdir, "TMP_PATH": self.tmpdir,
                "TMP_RAMFS_PATH": self.tmpdir}

    def _environment(self) -> tuple[dict[str, str], dict[str, str]]:
        """(the command's environment, the variables ${NAME} may name). Nothing comes from the
        runner's own environment."""
        paths = self._paths()
        env = {"PATH": _DEFAULT_PATH, "HOME": paths["TMP_PATH"], "TMPDIR": paths["TMP_PATH"],
               "LANG": "C.UTF-8", **self.spec.env, **paths,
               "QARNOT_RESOURCES_DIRECTORY": paths["TASK_PATH"],
               "QARNOT_RESULTS_DIRECTORY": paths["TASK_PATH"]}
        if self.spec.share_dir:
            env["QCOMPUTE_SHARE_PATH"] = SHARE if self.sandbox else self.spec.share_dir
        return {**env, **self.spec.secret_env}, env

    def _run_command(self) -> None:
        env, variables = self._environment()
        try:
            argv = split_command(self.spec.command, variables)
        except CommandError as exc:  # the user's failure, as a shell's syntax error (exit 2)
            self.emit(Output(self.spec.key, "stderr", f"qcompute: {exc}\n"))
            self.exit_code = 2
            return
        if not argv:
            self.exit_code = 0
            return
        # env finds the program in the command's PATH and exits 127 (not found) or 126 (not
        # executable), as a shell would; a program the sandbox surely finds needs no env
        if self.sandbox is not None:
            if not self.sandbox.finds(argv[0], env["PATH"]):
                argv = ["/usr/bin/env", "--", *argv]
            self._run_sandboxed(self.sandbox, argv, env)
            return
        watchdog, lifeline = _start_watchdog()
        try:
            proc = self._spawn(["/usr/bin/env", "--", *argv], env,
                               preexec_fn=pdeathsig_preexec(report_group_to=lifeline))
            self._watch(proc, proc.pid)  # a new session: the group id is the pid
        finally:
            watchdog.kill()  # first: with its lifeline closed it would signal a stale group id
            watchdog.wait()
            os.close(lifeline)

    def _run_sandboxed(self, sandbox: Sandbox, command: list[str], env: dict[str, str]) -> None:
        """bwrap runs the command; its PID namespace's init (reported on the info pipe) leads
        the command's process group, and its death takes down everything the command left.
        Where cgroups are writable the instance gets one of its own."""
        cgroup = InstanceCgroup.create(sandbox.config.memory_mb, sandbox.config.max_pids)
        try:
            self._run_bwrap(sandbox, command, env, cgroup)
        finally:
            if cgroup is not None:
                cgroup.remove()

    def _run_bwrap(self, sandbox: Sandbox, command: list[str], env: dict[str, str],
                   cgroup: Optional[InstanceCgroup]) -> None:
        """bwrap joins the slot's network from the spawning thread, gets PR_SET_PDEATHSIG in
        the child before its exec, as before the spawn became a vfork (relying on bwrap's own
        ``--die-with-parent``, some sandboxes outlived a SIGKILLed server, and arming it through
        ``setpriv`` did not stop that either), and its init enters the cgroup while it waits on
        the block pipe, before it starts the command."""
        info_read, info_write = os.pipe()
        block_read, block_write = os.pipe() if cgroup else (None, None)
        args = os.memfd_create("bwrap-args")  # keeps host paths out of the sandbox's ps
        try:
            bwrap = sandbox.argv(command, job=self.workdir, tmp=self.tmpdir,
                                 share=self.spec.share_dir, network=self.spec.network,
                                 info_fd=info_write, block_fd=block_read)
            split = bwrap.index("--")  # options in the file; the command stays in argv
            data = b"".join(arg.encode() + b"\0" for arg in bwrap[1:split])
            while data:
                data = data[os.write(args, data):]
            os.lseek(args, 0, os.SEEK_SET)
            passed = (info_write, args) if block_read is None else (info_write, args, block_read)
            proc: Optional[subprocess.Popen] = None
            try:
                with sandbox.spawning(self.spec.network):
                    proc = self._spawn([_bwrap_argv0(), "--args", str(args), *bwrap[split:]],
                                       env, pass_fds=passed, preexec_fn=pdeathsig_preexec(),
                                       executable=bwrap[0])
            except SandboxError:  # the thread could not leave the network: stop right there
                if proc is not None:
                    proc.kill()
                    proc.communicate()
                raise
            finally:
                for fd in (info_write, block_read):
                    if fd is not None:
                        os.close(fd)
                info_write = block_read = None
            assert proc is not None
            init = _sandbox_init(info_read, proc)  # the sandbox's session and group
            self.timeline["sandbox_ready"] = time.time()
            if cgroup is not None:
                cgroup.add(init)
                try:
                    os.write(block_write, b"\0")  # type: ignore[arg-type]
                except OSError:  # bwrap is gone: its exit code and stderr tell why
                    pass
            self._watch(proc, init, cgroup)
        finally:
            for fd in (info_read, info_write, block_read, block_write, args):
                if fd is not None:
                    os.close(fd)

    def _spawn(self, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = (),
               preexec_fn: Optional[Callable[[], None]] = None,
               executable: Optional[str] = None) -> subprocess.Popen:
        self.timeline["command_started"] = time.time()
        try:
            return subprocess.Popen(
                argv, executable=executable, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                pass_fds=pass_fds, preexec_fn=preexec_fn)
        except OSError as exc:
            raise _InfraError(f"cannot start the command: {exc}") from exc

    def _watch(self, proc: subprocess.Popen, pgid: int,
               cgroup: Optional[InstanceCgroup] = None) -> None:
        """Stream the command's output and telemetry until it ends; then nothing of its
        process group ``pgid`` is left."""
        self._pgid = pgid
        started = time.monotonic()
        pump = _OutputPump({"stdout": proc.stdout, "stderr": proc.stderr},
                           lambda stream, text: self.emit(Output(self.spec.key, stream, text)),
                           exit_of=proc.pid)
        network = self.sandbox.network if self.sandbox and self.spec.network else None
        sampler = Sampler(self.spec.key, self.emit, pgid, cgroup,
                          network.counters if network else None, _memory_limit_mb(self.sandbox))
        try:
            self.emit(Phase(self.spec.key, "running"))
            self.controller.command_started()
            self._wait(proc, pump, sampler)
        finally:
            self.timeline["command_ended"] = time.time()
            self.controller.command_ended()
            self._signal_group(signal.SIGKILL)  # nothing of the command outlives it
            self._pgid = None
            pump.drain(time.monotonic() + _DRAIN_SECONDS)
            pump.close()
            self.exec_time = time.monotonic() - started
            peak = cgroup.memory_bytes()[1] if cgroup else None
            self.peak_kb = max(self.peak_kb, (peak or 0) // 1024, int(sampler.peak_mb * 1024))

    def _wait(self, proc: subprocess.Popen, pump: "_OutputPump", sampler: Sampler) -> None:
        """Stream output and telemetry until the command ends; on cancel, TERM then KILL its
        group."""
        kill_at: Optional[float] = None
        while True:
            pump.pump(min(_POLL_SECONDS, sampler.poll()))
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
            code = proc.poll()
            self.exit_code = None if code is None else _shell_code(code)
            return
        if pid:
            self.exit_code = proc.returncode = _shell_code(os.waitstatus_to_exitcode(status))
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


def _shell_code(code: int) -> int:
    """Killed by signal N (Python's -N): 128 + N, as a shell and a container runtime say."""
    return 128 - code if code < 0 else code


def _bwrap_argv0() -> str:
    """bwrap's ``argv[0]``: this worker's reaper tag (see :mod:`qcompute.server.reaper`), so
    that a sandbox this worker leaves behind can be found; plain ``bwrap`` outside an executor
    that reaps."""
    tag = os.environ.get(TAG_ENV)
    return f"{tag}.{os.getpid()}" if tag else "bwrap"


def _sandbox_init(info_read: int, proc: subprocess.Popen) -> int:
    """The host pid of the sandbox's init, read from bwrap's info pipe. A sandbox that did not
    start is an infrastructure failure (its error is what bwrap printed)."""
    data = b""
    while b"}" not in data:
        ready, _, _ = select.select([info_read], [], [], _SANDBOX_START_SECONDS)
        chunk = os.read(info_read, 4096) if ready else b""
        if not chunk:
            proc.kill()
            _, err = proc.communicate()
            raise SandboxError("the sandbox did not start: "
                               + (err.decode(errors="replace").strip()[-500:] or "no answer"))
        data += chunk
    return int(json.loads(data[:data.index(b"}") + 1])["child-pid"])


def _memory_limit_mb(sandbox: Optional[Sandbox]) -> float:
    if sandbox is not None and sandbox.config.memory_mb:
        return float(sandbox.config.memory_mb)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


ACCEPTED = '{"kind": "accepted"}'  # serve(): a spec was read; SIGTERM now cancels it
ALIVE = '{"kind": "alive"}'  # serve(): the worker still runs its instance (a heartbeat)
_CANCEL_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _event_writer() -> Callable[[str], None]:
    """Write lines to the real stdout, from any thread; fd 1 then points to stderr, so a stray
    print cannot corrupt the event stream."""
    events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    lock = threading.Lock()

    def write(line: str) -> None:
        with lock:
            events.write(line + "\n")
            events.flush()

    return write


_Active = list[Optional[tuple[InstanceKey, InstanceControl]]]


def _read_stdin(fd: int, specs: queue.SimpleQueue, active: _Active) -> None:
    """The worker's stdin reader: spec lines go to ``specs`` (None at EOF); control lines go
    to the running instance's inbox. Raw reads (no buffered ``sys.stdin``) so that the main
    thread can exit while this one waits."""
    pending = b""
    while data := os.read(fd, _READ_BYTES):
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line.strip():
                _route(line, specs, active)
    if pending.strip():
        _route(pending, specs, active)
    specs.put(None)


def _route(line: bytes, specs: queue.SimpleQueue, active: _Active) -> None:
    """A control line is ``{"control": "snapshot"|"periodic"|"refresh", "key": {...}, ...}``;
    one for an instance that is not running (any more) is dropped. Anything else is a spec."""
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not (isinstance(message, dict) and "control" in message):
        specs.put(line)
        return
    current = active[0]
    try:
        if current is None or InstanceKey(**message["key"]) != current[0]:
            log.debug("control line for no running instance dropped: %r", line[:200])
            return
        current[1].apply(message)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("bad control line %r: %s", line[:200], exc)


def _heartbeat(write: Callable[[str], None], active: _Active, interval: float) -> None:
    """While an instance runs, say so every ``interval`` seconds (the executor's watchdog ends
    a worker that falls silent)."""
    while True:
        time.sleep(interval)
        if active[0] is not None:
            write(ALIVE)


def serve(write: Callable[[str], None], sandbox: Optional[Sandbox] = None) -> int:
    """Run instances one after another: read a spec JSON line, answer :data:`ACCEPTED`, write
    its events (Finished last), repeat; exit at EOF (after the running instance, if any).

    A thread reads stdin all along: while an instance runs, control lines (see :func:`_route`)
    reach it; the events they cause (SnapshotDone, ResourcesRefreshed) come before its Finished.

    SIGTERM cancels the current instance. It stays blocked while the worker is idle, and one
    left pending once an instance has ended (a cancel that crossed its Finished) is discarded
    before the next spec is accepted; the executor signals an instance only after its ACCEPTED
    line, so no cancel reaches the wrong instance. Each instance has its own cancel flag, workdir
    and command environment (built from the spec); the worker's cwd and environment never change.
    Every instance runs in ``sandbox`` (started by the caller), which the worker keeps.
    """
    current = [threading.Event()]  # the cancel flag of the instance being run
    for sig in _CANCEL_SIGNALS:
        signal.signal(sig, lambda *_: current[0].set())
    signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL_SIGNALS)  # the reader thread inherits it
    specs: queue.SimpleQueue = queue.SimpleQueue()
    active: _Active = [None]
    reader = threading.Thread(target=_read_stdin, args=(sys.stdin.fileno(), specs, active),
                              name="stdin-reader", daemon=True)
    reader.start()
    interval = float(os.environ.get(HEARTBEAT_ENV) or 0)
    if interval > 0:
        threading.Thread(target=_heartbeat, args=(write, active, interval), name="heartbeat",
                         daemon=True).start()
    while True:
        if sandbox is not None:  # the next instance's cgroup, made while idle
            InstanceCgroup.prepare(sandbox.config.memory_mb, sandbox.config.max_pids)
        if (line := specs.get()) is None:
            break
        taken_at = time.time()
        spec = InstanceSpec.from_json(line.decode())
        while signal.sigtimedwait(_CANCEL_SIGNALS, 0) is not None:
            pass  # stale: meant for the previous instance
        current[0] = cancel = threading.Event()
        control = InstanceControl()
        active[0] = (spec.key, control)  # before ACCEPTED: controls may follow it at once
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCEL_SIGNALS)
        try:
            write(ACCEPTED)
            run_instance(spec, lambda event: write(event_to_json(event)), cancel, control,
                         sandbox, taken_at)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL_SIGNALS)
            active[0] = None
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="qcompute-runner %(levelname)s %(name)s: %(message)s")
    write = _event_writer()
    if argv not in ([], ["--serve"]):
        log.error("usage: python -m qcompute.server.runner [--serve]")
        return 2
    config = SandboxConfig.from_json(os.environ.get(SANDBOX_ENV) or "{}")
    sandbox = Sandbox(config) if config.enabled else None
    try:
        if sandbox is not None:
            sandbox.start()
    except (SandboxError, OSError) as exc:  # every instance then fails as an infra failure
        log.error("cannot set up the instances' sandbox: %s", exc)
        return 3
    try:
        if argv == ["--serve"]:
            return serve(write, sandbox)
        cancel = threading.Event()
        for sig in _CANCEL_SIGNALS:
            signal.signal(sig, lambda *_: cancel.set())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _CANCEL_SIGNALS)  # the LocalExecutor blocks it
        spec = InstanceSpec.from_json(sys.stdin.read())
        run_instance(spec, lambda event: write(event_to_json(event)), cancel, sandbox=sandbox)
        return 0
    finally:
        remove_leftover_cgroups()
        if sandbox is not None:
            sandbox.close()


if __name__ == "__main__":
    sys.exit(main())
