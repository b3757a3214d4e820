"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with their assets served by this server.

The scripts, style sheet and icon come from the ``fastapi-offline`` package (in the
``server`` extra), mounted at ``/docs/assets``: nothing is loaded from a CDN, so the pages work
offline and behind a firewall. Swagger UI's validator badge (a request to
validator.swagger.io) and ReDoc's Google fonts are turned off for the same reason.
"""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

__all__ = ["install", "ASSETS"]

ASSETS = "/docs/assets"
_FILES = Path(fastapi_offline.__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Serve the two pages and their assets (build the app with ``docs_url=redoc_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=_FILES), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=title,
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)
