"""The instance sandbox: every command runs under bubblewrap, laid out as on a Qarnot node.

What an instance sees (``bwrap`` mounts, in a new user, PID, IPC, UTS and mount namespace):

==============  ===============================================================================
``/usr`` …      the host's system, read-only (``/bin``, ``/sbin``, ``/lib*`` as on the host)
``/etc``        a minimal set: certificates, alternatives, name resolution, a synthetic passwd
``/job``        the instance's working directory (``$TASK_PATH``, resources in, results out)
``/tmp``        a private directory on disk (``$TMP_PATH``), removed with the instance
``/ramfs``      a size-capped tmpfs (``$TMP_RAMFS_PATH``)
``/share``      a pool's tasks only: one directory per pool, shared with its preparation runs
``/proc``       its own processes only
==============  ===============================================================================

Everything else (the data dir, the database, the storage's files, other instances, the server's
environment) is absent, and the root file system is read-only. When the command ends, the PID
namespace's init ends and the kernel kills whatever the command left (no ``setsid`` escape).

**Network.** A runner worker keeps one network namespace (:class:`SlotNetwork`) for the
instances it runs one after another. ``pasta`` (Debian package ``passt``) connects it to the
outside: outbound traffic works, while the host's loopback is unreachable except the forwarded
ports (the API and S3). SeaweedFS's internal ports (master, volume, filer, admin) listen on the
host's loopback only, so no instance reaches them. By default the namespace has a copy of the
host's addresses (pasta's way), so nothing the host serves on its own addresses is reachable
either. When the server listens beyond loopback (``own_address``), the namespace gets an
address of its own instead (:data:`GUEST_ADDRESS`, link-local): the host's addresses are then
outside it, and an instance reaches the API and S3 served on one of them as an instance on
another node does (and so whatever else the host serves there). A profile may turn the
network off: the instance then gets an empty namespace (loopback only).

**Limits.** Where cgroups are writable (:mod:`.sandbox_cgroups`), each instance gets one that
caps its memory and process count and measures its CPU and memory.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ContextManager, Iterator, Optional

__all__ = ["SandboxConfig", "SandboxError", "Sandbox", "SlotNetwork", "resolve", "JOB", "TMP",
           "RAMFS", "SHARE", "BWRAP_PACKAGE", "PASTA_PACKAGE"]

JOB, TMP, RAMFS, SHARE = "/job", "/tmp", "/ramfs", "/share"
BWRAP_PACKAGE, PASTA_PACKAGE = "bubblewrap", "passt"
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of the host's /etc an instance sees: enough for libraries, TLS, DNS and Debian's
# alternatives (awk, editors...). passwd, group and hosts are written by the sandbox.
_ETC = ("alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "ld.so.cache",
        "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "nsswitch.conf",
        "host.conf", "gai.conf", "protocols", "services", "networks", "mime.types",
        "os-release", "debian_version", "fonts", "magic", "magic.mime", "python3",
        "inputrc", "profile", "bash.bashrc", "environment")
_PASSWD = "root:x:0:0:root:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_HOSTS = "127.0.0.1\tlocalhost qcompute\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_RESOLV = "/etc/resolv.conf"
_ALTERNATIVES = "/etc/alternatives"  # copied into the sandbox's /etc, links and all
_PRIVATE = shutil.ignore_patterns("private")  # /etc/ssl/private: the host's TLS keys
_CLONE_NEWNET = 0x40000000
# The instances' address and gateway in their namespace, a /30 (pasta answers for the gateway and
# relays every connection through the host's sockets).
GUEST_ADDRESS, GUEST_GATEWAY, GUEST_PREFIX = "169.254.1.2", "169.254.1.1", "30"
_LIBC = ctypes.CDLL(None, use_errno=True)
_READY_SECONDS = 10.0


class SandboxError(RuntimeError):
    """The sandbox could not be set up: an infrastructure failure, never the user's."""


@dataclass(frozen=True)
class SandboxConfig:
    """How instances are sandboxed: set by the server, read by every runner worker."""

    enabled: bool = False
    network: bool = False  # instances get a network through pasta (else none at all)
    own_address: bool = False  # an address of their own, not the host's (server beyond loopback)
    forward_ports: tuple[int, ...] = ()  # the host's loopback ports instances reach: API, S3
    memory_mb: int = 0  # cgroup memory cap per instance (0: none)
    max_pids: int = 0  # cgroup process cap per instance (0: none)
    ramfs_mb: int = 64  # size of $TMP_RAMFS_PATH
    ro_paths: tuple[str, ...] = ()  # more host paths to show read-only (software in /opt...)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "SandboxConfig":
        data = json.loads(text)
        return cls(**{**data, "forward_ports": tuple(data.get("forward_ports", ())),
                      "ro_paths": tuple(data.get("ro_paths", ()))})


class SlotNetwork:
    """One network namespace for the instances a runner worker runs, one after another.

    A tiny holder process creates it (and dies with this process: its stdin is a pipe only we
    write to); ``pasta`` connects it to the outside with only ``ports`` of the host's loopback
    forwarded. Setting it up costs ~25 ms once per worker; an instance's sandbox is started by a
    thread that joins it for that moment (:meth:`entered`), which costs two system calls.
    """

    def __init__(self, ports: tuple[int, ...], own_address: bool = False) -> None:
        self._ports = ports
        self._address = ["-a", GUEST_ADDRESS, "-n", GUEST_PREFIX, "-g", GUEST_GATEWAY] \
            if own_address else []
        self._holder: Optional[subprocess.Popen] = None
        self._pasta: Optional[subprocess.Popen] = None
        self._lifeline: Optional[int] = None
        self.fd: Optional[int] = None  # the namespace, for setns
        self._host: Optional[int] = None  # the namespace a thread goes back to

    def start(self) -> "SlotNetwork":
        pasta = shutil.which("pasta")
        if pasta is None:
            raise SandboxError(f"pasta not found: install the {PASTA_PACKAGE} package")
        read_end, self._lifeline = os.pipe()
        try:
            self._holder = subprocess.Popen(
                ["cat"], stdin=read_end, stdout=subprocess.DEVNULL, preexec_fn=_new_netns)
        finally:
            os.close(read_end)
        try:
            self._host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self.fd = os.open(f"/proc/{self._holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            if self._holder.poll() is not None:
                raise OSError("the holder exited")
        except OSError as exc:
            self.close()
            raise SandboxError("cannot create the instances' network namespace (the server "
                               f"needs root for it): {exc}") from exc
        ports = ",".join(map(str, self._ports)) or "none"
        self._pasta = subprocess.Popen(
            [pasta, "-f", "-q", "--runas", str(os.geteuid()), "-4", "--config-net", "--no-map-gw",
             *self._address,
             "-t", "none", "-u", "none", "-U", "none", "-T", ports,
             "--netns", f"/proc/self/fd/{self.fd}"],
            pass_fds=(self.fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """pasta has configured the namespace when it holds a default route."""
        deadline = time.monotonic() + _READY_SECONDS
        while time.monotonic() < deadline:
            if self._pasta is not None and self._pasta.poll() is not None:
                error = self._pasta.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
                self.close()
                raise SandboxError(f"pasta exited with code {self._pasta.returncode}: "
                                   + " ".join(line for line in error.splitlines()
                                              if "syslog" not in line)[-300:])
            with open(f"/proc/{self._holder.pid}/net/route") as routes:  # type: ignore[union-attr]
                if any(line.split()[1:2] == ["00000000"] for line in routes.readlines()[1:]):
                    return
            time.sleep(0.002)
        self.close()
        raise SandboxError("pasta did not configure the instances' network in time")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread in the namespace meanwhile (a network namespace is per thread):
        the processes it starts are in it, with no code to run in the child before exec."""
        _setns(self.fd, "enter the instances' network namespace")
        try:
            yield
        finally:
            _setns(self._host, "leave the instances' network namespace")

    def counters(self) -> tuple[int, int]:
        """Bytes received and sent so far, by every interface but loopback."""
        received = sent = 0
        try:
            with open(f"/proc/{self._holder.pid}/net/dev") as dev:  # type: ignore[union-attr]
                for line in dev.readlines()[2:]:
                    name, _, fields = line.partition(":")
                    if name.strip() != "lo":
                        values = fields.split()
                        received, sent = received + int(values[0]), sent + int(values[8])
        except (OSError, ValueError, IndexError, AttributeError):
            pass
        return received, sent

    def close(self) -> None:
        for proc in (self._pasta, self._holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for fd in (self.fd, self._lifeline, self._host):
            if fd is not None:
                os.close(fd)
        self.fd = self._lifeline = self._host = None
        if self._pasta is not None and self._pasta.stderr is not None:
            self._pasta.stderr.close()


def _minimal_etc(etc: Path) -> None:
    """Fill ``etc`` with what an instance sees as /etc: copies of the allowed entries of the
    host's (links kept as links), a synthetic passwd, group and hosts, and a mount point for
    the live resolv.conf. One bind mount instead of one per entry saves ~6 ms per instance."""
    for name in _ETC:
        source = Path("/etc", name)
        try:
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, etc / name, symlinks=True, ignore=_PRIVATE)
            elif source.exists() or source.is_symlink():
                shutil.copy2(source, etc / name, follow_symlinks=False)
        except OSError:  # unreadable: the instance goes without it
            continue
    for name, text in (("passwd", _PASSWD), ("group", _GROUP), ("hosts", _HOSTS),
                       ("resolv.conf", "")):
        (etc / name).write_text(text)
    for path in (etc, *etc.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _setns(fd: Optional[int], what: str) -> None:
    if fd is None or _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        raise SandboxError(f"cannot {what}: {os.strerror(ctypes.get_errno())}")


def _new_netns() -> None:
    if _LIBC.unshare(_CLONE_NEWNET) != 0:
        os._exit(126)


def _die_with_parent() -> None:
    _LIBC.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


class Sandbox:
    """What one runner worker keeps for its instances: the config, the files it shows as
    ``/etc/passwd`` and friends, and its network namespace."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.network: Optional[SlotNetwork] = None
        self._etc: Optional[str] = None
        self._bwrap = shutil.which("bwrap")
        self._system: list[str] = []  # the bwrap options for the host's system, made at start
        self._host_roots: list[str] = []  # what of the host the sandbox shows as it is
        self._shown: dict[str, bool] = {}  # directory -> whether it is one of those

    def start(self) -> "Sandbox":
        if self._bwrap is None:
            raise SandboxError(f"bwrap not found: install the {BWRAP_PACKAGE} package")
        self._etc = tempfile.mkdtemp(prefix="qcompute-etc-")
        _minimal_etc(Path(self._etc))
        for path in _SYSTEM_DIRS:
            if os.path.islink(path):
                self._system += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                self._system += ["--ro-bind", path, path]
                self._host_roots.append(os.path.realpath(path))
        # one mount for /etc (the copy), plus the live resolver configuration
        self._system += ["--ro-bind", self._etc, "/etc", "--ro-bind-try", _RESOLV, _RESOLV]
        for path in self.config.ro_paths:
            self._system += ["--ro-bind-try", path, path]
            self._host_roots.append(os.path.realpath(path))
        if self.config.network:
            self.network = SlotNetwork(self.config.forward_ports,
                                       self.config.own_address).start()
        return self

    def close(self) -> None:
        if self.network is not None:
            self.network.close()
            self.network = None
        if self._etc is not None:
            shutil.rmtree(self._etc, ignore_errors=True)
            self._etc = None

    def argv(self, command: list[str], *, job: str, tmp: str, share: Optional[str],
             network: bool, info_fd: int, block_fd: Optional[int] = None) -> list[str]:
        """The bwrap command line that runs ``command`` in /job. ``network`` False gives the
        instance an empty network namespace. bwrap writes the host pid of the sandbox's init on
        ``info_fd``; with ``block_fd``, the init sets the sandbox up, then waits for a byte
        there before it starts the command (time to move it into a cgroup)."""
        assert self._bwrap is not None and self._etc is not None
        args = [self._bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session",
                "--info-fd", str(info_fd), "--hostname", "qcompute"]
        if block_fd is not None:
            args += ["--block-fd", str(block_fd)]
        if not (network and self.network is not None):
            args.append("--unshare-net")
        args += [*self._system, "--proc", "/proc", "--dev", "/dev", "--bind", job, JOB, "--bind", tmp, TMP,
                 "--size", str(self.config.ramfs_mb * 1024 * 1024), "--tmpfs", RAMFS]
        if share is not None:
            args += ["--bind", share, SHARE]
        return args + ["--remount-ro", "/", "--chdir", JOB, "--", *command]  # root read-only

    def spawning(self, network: bool) -> ContextManager[None]:
        """Around the start of an instance's bwrap: with ``network``, the calling thread is in
        the slot's network meanwhile (else bwrap makes an empty one)."""
        if network and self.network is not None:
            return self.network.entered()
        return contextlib.nullcontext()

    def finds(self, program: str, path: str) -> bool:
        """Whether an instance's ``execvp(program)`` with this ``path`` surely finds an
        executable regular file in the system the sandbox shows as the host has it (``/usr``,
        the ``ro_paths``...). Then no ``env`` is needed to tell a missing program (127) or one
        that cannot run (126) from the command's own failure. False: the answer lies in what
        the host cannot see as the instance does (``/job``, ``/tmp``...), or it is no."""
        if "/" in program:  # no search: an absolute path, or one relative to /job
            return program.startswith("/") and self._runnable(program)
        for directory in path.split(":"):  # as execvp searches
            if not self._as_on_host(directory):
                return False  # a file there would come first, and only the sandbox knows
            candidate = os.path.join(directory, program)
            if os.path.lexists(candidate):
                return self._runnable(candidate)
        return False

    def _runnable(self, path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 == 0o111
                and self._links_as_on_host(path))

    def _links_as_on_host(self, path: str) -> bool:
        """Whether every link from ``path`` to its file is where the sandbox shows the host (or
        in /etc/alternatives, which it copies)."""
        for _ in range(40):  # as the kernel's limit of links followed
            directory = os.path.dirname(path)
            if not (directory == _ALTERNATIVES or self._as_on_host(directory)):
                return False
            try:
                target = os.readlink(path)
            except OSError:  # not a link: the file itself
                return True
            path = os.path.normpath(os.path.join(directory, target))
        return False

    def _as_on_host(self, directory: str) -> bool:
        """Whether the sandbox shows ``directory`` as the host has it (read-only). Cached: the
        sandbox's layout is fixed once it started."""
        shown = self._shown.get(directory)
        if shown is None:
            real = os.path.realpath(directory)
            shown = self._shown[directory] = directory.startswith("/") and any(
                real == root or real.startswith(root + "/") for root in self._host_roots)
        return shown


def resolve(config: SandboxConfig) -> tuple[SandboxConfig, str]:
    """What of ``config`` works here, found by starting one real sandbox (and its network):
    the config to use (``enabled`` False: bwrap cannot run; ``network`` False: pasta cannot)
    and a line for the operator."""
    if not config.enabled:
        return config, "unsandboxed (turned off by the operator)"
    error = _try(config)
    if error and config.network:
        without = replace(config, network=False)
        if _try(without) is None:
            return without, f"bubblewrap sandbox, NO network for instances ({error})"
    if error:
        return replace(config, enabled=False, network=False), f"UNSANDBOXED: {error}"
    return config, "bubblewrap sandbox, " + (
        "isolated network (API and S3 reachable)" if config.network else "no network")


def _try(config: SandboxConfig) -> Optional[str]:
    """Start a sandbox running ``true``; None if it worked, else why not."""
    if shutil.which("bwrap") is None:
        return f"bwrap not found: install the {BWRAP_PACKAGE} package"
    sandbox = Sandbox(config)
    job = tempfile.mkdtemp(prefix="qcompute-probe-")
    read_end, write_end = os.pipe()
    try:
        sandbox.start()
        with sandbox.spawning(config.network):
            probe = subprocess.Popen(
                sandbox.argv(["true"], job=job, tmp=job, share=None, network=config.network,
                             info_fd=write_end),
                pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = probe.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            probe.kill()
            probe.communicate()
            raise
        if probe.returncode != 0:
            return ("bwrap cannot start a sandbox here: "
                    + err.decode(errors="replace").strip()[-300:])
        return None
    except (SandboxError, OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    finally:
        os.close(read_end)
        os.close(write_end)
        sandbox.close()
        shutil.rmtree(job, ignore_errors=True)
