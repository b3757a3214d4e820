"""``create_app(settings)``: the FastAPI application, with nothing started at import time.

The lifespan starts, in order: the data dir (made private), the key that seals secrets and
tokens, the database (migrated), the storage (embedded SeaweedFS or an external S3), the owner
account and client config, then the scheduler and its executor; it stops them in reverse order.
"""
from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from typing import Callable, Optional

from fastapi import FastAPI

from qcompute._version import __version__

from .api import admin, catalogue, jobs, openapi, pools, secrets, snapshots, tasks
from .api.deps import AppContext
from .bootstrap import ensure_owner, make_private
from .crypto import check_key, key_path, load_sealer
from .db import make_engine, make_session_factory, migrate
from .errors import install_error_handlers
from .executors.base import Executor
from .scheduler import Scheduler
from .services.output import OutputStore
from .settings import ServerSettings

log = logging.getLogger(__name__)

ExecutorFactory = Callable[[Callable], Executor]


def _default_executor(settings: ServerSettings) -> ExecutorFactory:
    from .executors.local import LocalExecutor

    return lambda on_event: LocalExecutor(on_event, capacity=settings.max_concurrent_instances)


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
        sealer = load_sealer(settings)
        log.info("node kinds: %s", "; ".join(n.describe() for n in settings.node_kinds))
        engine = make_engine(settings.resolved_database_url)
        migrate(engine, sealer)
        sessions = make_session_factory(engine, sealer)
        with sessions() as session:
            check_key(session, key_path(settings))
        if storage is None:
            from .storage import make_storage
        store = storage or make_storage(settings)
        store.start()
        try:
            ensure_owner(sessions, settings, store)
            outputs = OutputStore(settings.data_dir / "output", settings.output_buffer_bytes)
            scheduler = Scheduler(settings=settings, sessions=sessions,
                                  executor_factory=executor_factory or _default_executor(settings),
                                  outputs=outputs, storage=store)
            scheduler.start()
            app.state.ctx = AppContext(settings, sessions, scheduler, outputs, store)
            log.info("qcompute server ready at %s (storage %s)", settings.api_url,
                     store.endpoint_url)
            try:
                yield
            finally:
                scheduler.stop()
        finally:
            store.stop()
            engine.dispose()

    app = FastAPI(title="qcompute", version=__version__, lifespan=lifespan,
                  description="A compute cluster speaking the Qarnot REST dialect.")
    install_error_handlers(app)
    app.add_middleware(_MergeSlashes)
    for module in (catalogue, tasks, admin, secrets, pools, jobs, snapshots):
        app.include_router(module.router)
    openapi.install(app)
    return app
