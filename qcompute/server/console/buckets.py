"""Console bucket pages: the user's buckets, folders and objects under a prefix (paged),
download, upload (a form with a file input) and delete of an object or a folder.

Everything goes through :class:`~qcompute.server.services.buckets.BucketBrowser`, scoped to the
user's buckets as its own S3 identity is. An upload is parsed by Starlette into a spooled
temporary file (in memory up to 1 MiB, then on disk) and streamed from there to S3 (multipart
past 8 MiB); ``console_upload_max_bytes`` caps it.
"""
from __future__ import annotations

from typing import Annotated, Optional
from urllib.parse import quote, urlencode

from fastapi import File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, StreamingResponse

from ..api.deps import ContextDep
from ..errors import BadRequest
from ..services.buckets import BucketBrowser
from .auth import ConsoleUser
from .pages import PREFIX, SECURITY_HEADERS, console_router, render

router = console_router()

UPLOAD_PATH = rf"{PREFIX}/buckets/[^/]+/upload"  # its body may pass max_request_bytes
FORM_OVERHEAD = 64 * 1024  # the form's other fields and multipart framing, past the file


def _browser(ctx, user) -> BucketBrowser:
    return BucketBrowser(ctx.storage.admin_access, user.bucket_prefix)


def _listing_url(bucket: str, prefix: str = "") -> str:
    query = f"?{urlencode({'prefix': prefix})}" if prefix else ""
    return f"{PREFIX}/buckets/{quote(bucket)}{query}"


def _crumbs(prefix: str) -> list[tuple[str, str]]:
    """(label, prefix) of each folder above and including ``prefix``."""
    parts = [p for p in prefix.split("/") if p]
    return [(part, "/".join(parts[:n + 1]) + "/") for n, part in enumerate(parts)]


@router.get("/buckets")
def bucket_list(request: Request, user: ConsoleUser, ctx: ContextDep):
    return render(request, "buckets/list.html", {
        "user": user, "section": "buckets", "buckets": _browser(ctx, user).buckets()})


@router.get("/buckets/{bucket}")
def browse(bucket: str, request: Request, user: ConsoleUser, ctx: ContextDep,
           prefix: str = "", token: Optional[str] = None):
    listing = _browser(ctx, user).listing(bucket, prefix, token or None)
    return render(request, "buckets/browse.html", {
        "user": user, "section": "buckets", "listing": listing, "crumbs": _crumbs(prefix),
        "first_page": not token, "limit": ctx.settings.console_upload_max_bytes,
        "here": _listing_url(bucket, prefix)})


@router.get("/buckets/{bucket}/download")
def download(bucket: str, key: str, user: ConsoleUser, ctx: ContextDep):
    found = _browser(ctx, user).download(bucket, key)
    name = key.rsplit("/", 1)[-1] or "download"
    return StreamingResponse(found.chunks, media_type=found.content_type, headers={
        **SECURITY_HEADERS, "Content-Length": str(found.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"})


@router.post("/buckets/{bucket}/upload")
def upload(bucket: str, user: ConsoleUser, ctx: ContextDep,
           file: Annotated[UploadFile, File()], prefix: Annotated[str, Form()] = ""):
    name = (file.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not name:
        raise BadRequest("choose a file to upload", code="invalid_upload")
    _browser(ctx, user).upload(bucket, prefix + name, file.file,
                               max_bytes=ctx.settings.console_upload_max_bytes,
                               content_type=file.content_type)
    return RedirectResponse(_listing_url(bucket, prefix), status_code=303)


@router.post("/buckets/{bucket}/delete")
def delete(bucket: str, user: ConsoleUser, ctx: ContextDep,
           key: Annotated[str, Form()] = "", folder: Annotated[str, Form()] = ""):
    """Delete the object ``key``, or every object under the prefix ``folder``."""
    browser = _browser(ctx, user)
    if folder:
        browser.delete_prefix(bucket, folder)
        parent = folder.rstrip("/").rpartition("/")[0]
    elif key:
        browser.delete(bucket, key)
        parent = key.rpartition("/")[0]
    else:
        raise BadRequest("name the object (key) or the folder to delete", code="invalid_request")
    return RedirectResponse(_listing_url(bucket, parent + "/" if parent else ""), 303)
