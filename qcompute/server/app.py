"""``create_app(settings)``: the FastAPI application, with nothing started at import time.

The lifespan starts, in order: the data dir (made private), the logging (logs.py), the key
that seals secrets and tokens, the database (migrated; its commits logged by transitions.py),
the storage (embedded SeaweedFS or an external S3), the owner account and client config, then
the scheduler and its executor, and the metrics' gauges; it stops them in reverse order.
"""
from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from typing import Callable, Optional
from urllib.parse import urlsplit

from fastapi import FastAPI

from qcompute._version import __version__

from . import console, logs, transitions
from .api import (admin, catalogue, docs, jobs, metrics as metrics_api, openapi, pools, secrets,
                  snapshots, tasks)
from .api.deps import AppContext
from .api.limits import BodyLimit
from .bootstrap import ensure_instance_id, ensure_owner, ensure_storage_keys, make_private
from .crypto import check_key, key_path, load_sealer
from .db import make_engine, make_session_factory, migrate
from .errors import install_error_handlers
from .executors.base import Executor
from .metrics import Metrics, RequestTimer
from .scheduler import Scheduler
from .services.output import OutputStore
from .settings import ServerSettings, sandbox_config

log = logging.getLogger(__name__)

ExecutorFactory = Callable[[Callable], Executor]


def _default_executor(settings: ServerSettings, store) -> ExecutorFactory:
    """The local executor, with the instance sandbox this host can run (probed once)."""
    from .executors.local import LocalExecutor
    from .sandbox import resolve

    ports = {settings.port} | {port for url in (store.endpoint_url,
                                                store.qarnot_sdk_endpoint_url)
                               if (port := _loopback_port(url))}
    config, note = resolve(sandbox_config(settings, tuple(sorted(ports))))
    if settings.sandbox == "bubblewrap" and not config.enabled:
        raise RuntimeError(f"sandbox = bubblewrap, but {note}")
    if not config.enabled:
        log.warning("INSTANCES RUN UNSANDBOXED: %s. Every task can read the data dir, the "
                    "database and other users' work: keep this cluster to one trusted user.",
                    note)
    else:
        log.info("instances: %s", note)
    if settings.executor == "ray":
        return _ray_executor(settings, config, note)
    return lambda on_event: LocalExecutor(on_event, capacity=settings.max_concurrent_instances,
                                          sandbox=config, isolation=note,
                                          stall_seconds=settings.runner_stall_seconds)


def _ray_executor(settings: ServerSettings, sandbox, note: str) -> ExecutorFactory:
    """The Ray executor (docs/ray.rst): joins or starts the Ray cluster; the node kinds that
    constraints are checked against are its live nodes from then on."""
    try:
        from .executors.ray_executor import RayExecutor, start_ray
    except ImportError as exc:
        raise RuntimeError(f"executor = ray needs the [ray] extra: pip install "
                           f"'qcompute[server,ray]' ({exc})") from None

    def make(on_event) -> Executor:
        start_ray(settings)
        executor = RayExecutor(on_event, cpus_per_slot=settings.ray_cpus_per_slot,
                               sandbox=sandbox, isolation=note)
        settings.watch_nodes(executor.node_kinds)
        return executor

    return make


def _loopback_port(url: str) -> Optional[int]:
    """The port of a URL served on this host's loopback (what instances must reach)."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        return parts.port or (443 if parts.scheme == "https" else 80)
    return None


class _MergeSlashes:
    """``https://host/`` + ``/tasks`` gives ``//tasks`` in Qarnot's sample config: merge them."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = {**scope, "path": re.sub("/{2,}", "/", scope["path"])}
        await self.app(scope, receive, send)


def create_app(settings: ServerSettings, *, storage=None,
               executor_factory: Optional[ExecutorFactory] = None) -> FastAPI:
    """Build the API. ``storage`` and ``executor_factory`` replace the defaults (for tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        make_private(settings)
        restore_logging = logs.configure(settings)  # access.log goes in the data dir
        try:
            async with _serving(app):
                yield
        finally:
            restore_logging()

    @asynccontextmanager
    async def _serving(app: FastAPI):
        instance_id = ensure_instance_id(settings)
        sealer = load_sealer(settings)
        if settings.executor == "local":
            log.info("node kinds: %s", "; ".join(n.describe() for n in settings.node_kinds))
        engine = make_engine(settings.resolved_database_url)
        migrate(engine, sealer)
        sessions = make_session_factory(engine, sealer)
        transitions.watch(sessions)
        with sessions() as session:
            check_key(session, key_path(settings))
        if storage is None:
            from .storage import make_storage
        store = storage or make_storage(settings)
        store.start()
        try:
            ensure_owner(sessions, settings, store)
            ensure_storage_keys(sessions, store)
            outputs = OutputStore(settings.data_dir / "output", settings.output_buffer_bytes)
            scheduler = Scheduler(settings=settings, sessions=sessions,
                                  executor_factory=executor_factory
                                  or _default_executor(settings, store),
                                  outputs=outputs, storage=store, metrics=app.state.metrics)
            replica = None
            if engine.dialect.name == "postgresql":  # replicas may share it: one schedules
                from .replicas import Replica
                replica = Replica(settings.resolved_database_url, scheduler, outputs,
                                  retry_seconds=settings.leader_retry_seconds)
                replica.start()
            else:
                scheduler.start()
            app.state.ctx = AppContext(settings, sessions, scheduler, outputs, store,
                                       instance_id)
            app.state.sealer = sealer  # the console seals its session cookie with it
            app.state.metrics.watch(app.state.ctx)
            log.info("qcompute server ready at %s (storage %s)", settings.api_url,
                     store.endpoint_url)
            try:
                yield
            finally:
                app.state.metrics.unwatch()
                (replica or scheduler).stop()
        finally:
            store.stop()
            engine.dispose()

    app = FastAPI(title="qcompute", version=__version__, lifespan=lifespan,
                  description="A compute cluster speaking the Qarnot REST dialect.",
                  docs_url=None, redoc_url=None)  # docs.install: served without a CDN
    # innermost: a body refused while it streams raises a 413 that the error handlers render
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes,
                       paths=console.body_limits(settings))
    install_error_handlers(app)
    app.state.metrics = Metrics()
    app.add_middleware(RequestTimer, metrics=app.state.metrics)  # inside _MergeSlashes' copy
    app.add_middleware(_MergeSlashes)
    for module in (catalogue, tasks, admin, secrets, pools, jobs, snapshots, metrics_api):
        app.include_router(module.router)
    if settings.fault_injection:
        from .api import faults
        app.include_router(faults.router)
    console.install(app)
    openapi.install(app)
    docs.install(app)
    return app
