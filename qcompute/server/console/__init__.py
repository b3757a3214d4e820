"""The web console at ``/console``: server-rendered Jinja2 pages with htmx (docs/console.rst).

Each area is a module with a ``router`` (pages.console_router); :func:`install` includes them
and serves the vendored assets at ``/console/static``.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import signin, tasks
from .pages import HERE, PREFIX

__all__ = ["install"]

MODULES = (signin, tasks)


def install(app: FastAPI) -> None:
    for module in MODULES:
        app.include_router(module.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
