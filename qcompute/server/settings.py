"""Server settings: one pydantic-settings class, read from ``QCOMPUTE_SERVER_*`` variables.

``create_app(settings)`` takes an instance; nothing reads settings at import time.
"""
from __future__ import annotations

import ipaddress
import os
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal, Optional
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, Field, PrivateAttr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .hardware import NodeCapabilities, NodeOverrides, detect
from .schemas.tasks import ARG_STRLEN
from .sandbox import SandboxConfig

__all__ = ["Profile", "ServerSettings", "default_data_dir", "sandbox_config"]


ENVIRONMENT_HEADROOM = 256 * 1024  # ARG_MAX kept for what the runner adds (paths, secrets)


def _arg_max() -> int:
    """The kernel's limit on a process's arguments plus environment (0: unknown)."""
    try:
        return max(os.sysconf("SC_ARG_MAX"), 0)
    except (AttributeError, ValueError, OSError):
        return 0


def default_data_dir() -> Path:
    """``$QCOMPUTE_SERVER_DATA_DIR``, else the platformdirs user data dir."""
    return Path(os.environ.get("QCOMPUTE_SERVER_DATA_DIR") or platformdirs.user_data_dir("qcompute"))


class Profile(BaseModel):
    """A profile: a name, its default constants, and what its slots must offer."""

    name: str
    constants: dict[str, str] = Field(default_factory=dict)
    command_constant: str = "DOCKER_CMD"  # the constant holding the command to run
    description: str = ""
    network: bool = True  # False: its sandboxed instances get no network at all


def _default_profiles() -> list[Profile]:
    return [
        Profile(
            name="docker-batch",
            constants={"DOCKER_REPO": "library/ubuntu", "DOCKER_TAG": "latest", "DOCKER_CMD": ""},
            description="Runs DOCKER_CMD as a Qarnot node does (${NAME} filled in, split into "
                        "words, no shell) in a bubblewrap sandbox on the host's system; "
                        "DOCKER_REPO and DOCKER_TAG are ignored (no container runtime).",
        ),
    ]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QCOMPUTE_SERVER_", extra="forbid")
    _live_nodes: Optional[Callable[[], list[NodeCapabilities]]] = PrivateAttr(default=None)

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8801
    # The API's URL as clients and instances reach it (a load balancer in front of replicas, a
    # DNS name); empty: http://<host>:<port>. Client configs and instances' exported
    # credentials carry it; the server itself listens on host and port.
    public_url: str = ""
    # Seconds an idle HTTP connection stays open: longer than any client's poll interval (the
    # official SDK sleeps 5 s, uvicorn's default keep-alive, and may reuse a connection just as
    # it is closed). 75, as common proxies use.
    keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    # SQLAlchemy URL; empty means SQLite at <data_dir>/qcompute.db.
    database_url: str = ""
    # The key sealing secret values and tokens in the database (crypto.py); empty means
    # <data_dir>/secrets.key, created on first start. A named file must exist and be valid.
    secrets_key_file: Optional[Path] = None

    # Storage: "embedded" starts SeaweedFS `weed mini` under <data_dir>/s3; "external" uses an S3
    # store run by someone else at s3_url, with its admin keys (docs/external-s3.rst).
    storage: Literal["embedded", "external"] = "embedded"
    # External only; embedded: http://127.0.0.1:<s3_port>, or where `host` is not loopback,
    # http://<advertised_host>:<s3_port>, served on host by a relay to SeaweedFS's loopback S3
    # (storage/relay.py): SeaweedFS's other ports stay on loopback.
    s3_url: str = ""
    s3_port: int = 18333
    s3_admin_access_key: str = ""  # generated and kept in <data_dir> for embedded
    s3_admin_secret_key: str = ""
    s3_region: str = "us-east-1"
    # External only: where each user's S3 keys come from. "iam": the store's IAM API at
    # s3_iam_url (empty: s3_url, as SeaweedFS serves it), one IAM user per user with a policy on
    # its bucket prefix; "file": s3_keys_file, a JSON object {email: {"accessKey", "secretKey"}}
    # written by the operator, who scopes each pair to the user's bucket prefix.
    s3_user_keys: Literal["iam", "file"] = "iam"
    s3_iam_url: str = ""
    s3_keys_file: Optional[Path] = None
    # Embedded only: GET /settings hands the official qarnot SDK (User-Agent qarnot-sdk-python)
    # a thin S3 front (storage/s3front.py) where CreateBucket of an owned bucket answers 200, as
    # on Qarnot; everything else talks to SeaweedFS directly. Port 0: one picked on first start
    # and kept in <data_dir>/s3-front.port.
    s3_front: bool = True
    s3_front_port: int = Field(default=0, ge=0, le=65535)
    # Embedded only: a SeaweedFS that dies is started again after s3_restart_backoff_seconds,
    # doubled for each restart already in the last s3_restart_window_seconds (at most 30 s); past
    # s3_restart_limit restarts in that window (0: never restart) it stays down, and /health says
    # so until the server is restarted.
    s3_restart_limit: int = Field(default=5, ge=0)
    s3_restart_window_seconds: float = Field(default=600.0, gt=0)
    s3_restart_backoff_seconds: float = Field(default=1.0, ge=0, le=3600)

    # Executor: "local" runs instances on this host; "ray" on the nodes of a Ray cluster
    # (docs/ray.rst): the one at ray_address ("host:port" of its GCS), or a head this server
    # starts when it is empty. One slot is a bundle of ray_cpus_per_slot CPUs. Ray's token
    # authentication is always on: its token is in ray_token_file (default <data_dir>/ray-token,
    # made on first start), which every node and driver of the cluster must share. The head it
    # starts advertises ray_node_ip to the other nodes (empty: `host` when that is one address
    # other than loopback, else the address Ray picks: the one of the default route); joining
    # ray_address, the server is a driver on the node of this machine at that address.
    executor: Literal["local", "ray"] = "local"
    ray_address: str = ""
    ray_node_ip: str = ""
    ray_cpus_per_slot: float = Field(default=1.0, gt=0, le=1024)
    ray_token_file: Optional[Path] = None
    max_concurrent_instances: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    kill_grace_seconds: float = Field(default=5.0, ge=0)
    max_instances_per_task: int = Field(default=100_000, ge=1)
    max_infra_retries: int = Field(default=2, ge=0)  # re-queues after a lost runner or a restart
    # A runner worker holding an instance that sends nothing (not even its heartbeat, every
    # quarter of this) for this long is killed: an infrastructure failure. 0: never.
    runner_stall_seconds: float = Field(default=60.0, ge=0, le=86400)
    # A failed results upload is tried again (only the files not uploaded yet), with backoff,
    # up to this many tries in all, none starting later than this after the first failure.
    result_upload_attempts: int = Field(default=8, ge=1, le=100)
    result_upload_seconds: float = Field(default=300.0, ge=0, le=86400)
    scheduler_tick_seconds: float = Field(default=1.0, gt=0, le=60)  # timers, elastic pools
    # PostgreSQL: how often a standby replica tries the scheduler's lock (docs/postgresql.rst)
    leader_retry_seconds: float = Field(default=1.0, gt=0, le=5)
    fault_injection: bool = False  # tests only: POST /admin/faults makes scheduler rounds fail
    # Logging (logs.py, docs/metrics.rst): every record as text or as one JSON object per
    # line; uvicorn's access lines to <data_dir>/access.log, to stdout, or nowhere.
    log_format: Literal["text", "json"] = "text"
    access_log: Literal["file", "stdout", "off"] = "file"

    # Sandbox (sandbox.py): "auto" runs every instance under bubblewrap where it works, else
    # unsandboxed with a loud warning (and `user add` refused); "bubblewrap" refuses to start
    # without it; "off" never sandboxes (one trusted user only).
    sandbox: Literal["auto", "bubblewrap", "off"] = "auto"
    instance_network: bool = True  # instances reach the internet, the API and S3 (via pasta)
    instance_memory_mb: int = Field(default=0, ge=0)  # cgroup memory cap per instance; 0: none
    instance_max_pids: int = Field(default=4096, ge=0)  # cgroup process cap; 0: none
    instance_ramfs_mb: int = Field(default=64, ge=1, le=1_048_576)  # $TMP_RAMFS_PATH size
    instance_ro_paths: list[str] = Field(default_factory=list)  # more host paths, read-only

    # Limits on what a request may hold (docs/tasks.rst, "Limits"). A body past
    # max_request_bytes gets a 413. Constants become environment variables: each "KEY=value"
    # must stay below the kernel's 128 KiB per string, and a task's constants, instance
    # variables and command line together below max_environment_bytes, which leaves room in
    # the kernel's ARG_MAX for the runner's variables and granted secrets.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    console_upload_max_bytes: int = Field(default=5 * 1024**3, ge=1024)  # a console upload
    max_constants: int = Field(default=1000, ge=1)  # per task or pool
    max_constant_bytes: int = Field(default=ARG_STRLEN - 1, ge=1024, le=ARG_STRLEN - 1)
    max_environment_bytes: int = Field(default=1024 * 1024, ge=64 * 1024)

    # Output: each stream of each instance keeps at most this many bytes (oldest bytes dropped).
    output_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    # A repeat of a request still running waits this long for its answer, then gets a 409
    # with Retry-After; a key claimed longer than the lease (its server died) is taken over.
    idempotency_wait_seconds: float = Field(default=10.0, ge=0, le=600)
    idempotency_lease_seconds: int = Field(default=600, ge=10)
    long_poll_max_seconds: float = Field(default=60.0, ge=1, le=600)  # GET /tasks/{uuid}?wait=

    profiles: list[Profile] = Field(default_factory=_default_profiles)
    # Hardware (constraints are checked against it): `node` overrides what is detected on this
    # host; `nodes`, when given, replaces detection with explicit node kinds.
    node: NodeOverrides = Field(default_factory=NodeOverrides)
    nodes: list[NodeCapabilities] = Field(default_factory=list)
    default_user_email: str = "owner@qcompute.local"

    @field_validator("secrets_key_file", "ray_token_file", "s3_keys_file", mode="before")
    @classmethod
    def _empty_is_default(cls, value):
        return None if value == "" else value

    @field_validator("public_url")
    @classmethod
    def _an_http_url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        return value.rstrip("/")

    @field_validator("ray_node_ip")
    @classmethod
    def _an_address(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)  # a ValueError names the bad value
        return value

    @field_validator("max_environment_bytes")
    @classmethod
    def _below_arg_max(cls, value: int) -> int:
        arg_max = _arg_max()
        if arg_max and value > arg_max - ENVIRONMENT_HEADROOM:
            raise ValueError(f"{value} leaves less than {ENVIRONMENT_HEADROOM} bytes of this "
                             f"host's ARG_MAX ({arg_max}) for the runner's own variables")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'qcompute.db'}"

    @property
    def api_url(self) -> str:
        """Where this process serves the API."""
        return f"http://{self.host}:{self.port}"

    @property
    def advertised_url(self) -> str:
        """What clients and instances are told to reach: ``public_url``, else :attr:`api_url`."""
        return self.public_url or self.api_url

    @property
    def beyond_loopback(self) -> bool:
        """Whether the server listens on more than loopback (``host`` not a loopback address)."""
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"

    @property
    def advertised_host(self) -> str:
        """The name or address other machines reach this server at: ``public_url``'s host,
        else ``ray_node_ip``, else ``host`` (127.0.0.1 for 0.0.0.0 or ::)."""
        if self.public_url:
            return urlsplit(self.public_url).hostname or self.host
        if self.ray_node_ip:
            return self.ray_node_ip
        try:
            unspecified = ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            unspecified = False
        return "127.0.0.1" if unspecified else self.host

    @property
    def node_kinds(self) -> list[NodeCapabilities]:
        """The node kinds this cluster runs on: those of the executor's live nodes when it
        spans several (see :meth:`watch_nodes`), else ``nodes``, else this host (detected
        once)."""
        if self._live_nodes is not None:
            return self._live_nodes()
        return self._configured_nodes

    @cached_property
    def _configured_nodes(self) -> list[NodeCapabilities]:
        return list(self.nodes) or [detect(self.data_dir, self.node)]

    def watch_nodes(self, source: Callable[[], list[NodeCapabilities]]) -> None:
        """From now on, ``node_kinds`` asks ``source`` (an executor's live nodes)."""
        self._live_nodes = source

    @property
    def resolved_ray_node_ip(self) -> Optional[str]:
        """The address the Ray head this server starts is reached at (None: Ray's pick)."""
        if self.ray_node_ip:
            return self.ray_node_ip
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:  # a host name: Ray wants an address
            return None
        return None if address.is_loopback or address.is_unspecified else self.host

    @property
    def resolved_ray_token_file(self) -> Path:
        return self.ray_token_file or self.data_dir / "ray-token"

    def profile(self, name: str) -> Optional[Profile]:
        return next((p for p in self.profiles if p.name == name), None)


def sandbox_config(settings: ServerSettings, forward_ports: tuple[int, ...]) -> SandboxConfig:
    """The sandbox the settings ask for, before it is probed (``sandbox.resolve``)."""
    return SandboxConfig(enabled=settings.sandbox != "off", network=settings.instance_network,
                         own_address=settings.beyond_loopback,
                         forward_ports=forward_ports, memory_mb=settings.instance_memory_mb,
                         max_pids=settings.instance_max_pids, ramfs_mb=settings.instance_ramfs_mb,
                         ro_paths=tuple(settings.instance_ro_paths))
