"""The web console at ``/console``: server-rendered Jinja2 pages with htmx (docs/console.rst).

Each area is a module with a ``router`` (pages.console_router); :func:`install` includes them
and serves the vendored assets at ``/console/static``.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..settings import ServerSettings
from . import admin, buckets, jobs, pools, signin, tasks
from .pages import HERE, PREFIX

__all__ = ["install", "body_limits"]

MODULES = (signin, tasks, pools, jobs, buckets, admin)


def body_limits(settings: ServerSettings) -> tuple[tuple[str, int, str], ...]:
    """The request paths whose body may pass ``max_request_bytes`` (api/limits.BodyLimit)."""
    return ((buckets.UPLOAD_PATH, settings.console_upload_max_bytes + buckets.FORM_OVERHEAD,
             "console_upload_max_bytes"),)


def install(app: FastAPI) -> None:
    for module in MODULES:
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
