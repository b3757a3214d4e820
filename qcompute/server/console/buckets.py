"""Console bucket pages: the user's buckets, folders and objects under a prefix (paged),
download, upload and delete of an object or a folder.

Everything goes through :class:`~qcompute.server.services.buckets.BucketBrowser`, scoped to the
user's buckets as its own S3 identity is. An upload is a ``PUT`` of the file's bytes (sent by
console.js, the CSRF token in ``X-CSRF-Token``), streamed to S3 as it arrives (multipart past
8 MiB: at most a few parts in memory), never held whole; past ``console_upload_max_bytes``
it stops and nothing is stored. Without script, the form posts ``multipart/form-data``
instead, which Starlette parses into a spooled temporary file first (in memory up to 1 MiB,
then on disk), then streams to S3 the same way.
"""
from __future__ import annotations

import asyncio
from typing import Annotated, AsyncIterator, Optional
from urllib.parse import quote, urlencode

from fastapi import File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse

from ..api.deps import ContextDep
from ..errors import BadRequest
from ..services.buckets import BucketBrowser, UploadTooLarge
from .auth import ConsoleUser
from .pages import PREFIX, SECURITY_HEADERS, console_router, render

router = console_router()

UPLOAD_PATH = rf"{PREFIX}/buckets/[^/]+/upload"  # its body may pass max_request_bytes
FORM_OVERHEAD = 64 * 1024  # the form's other fields and multipart framing, past the file


class _Body:
    """The request body as a blocking file, for boto3's upload in a worker thread: each read
    takes the next chunks from the event loop, and returns ``size`` bytes unless the body ends
    (boto3 cuts its parts from single reads)."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks, self._loop = chunks, loop
        self._buffer, self._ended = bytearray(), False

    def _next(self) -> bytes:
        try:
            return asyncio.run_coroutine_threadsafe(self._chunks.__anext__(), self._loop).result()
        except StopAsyncIteration:
            self._ended = True
            return b""

    def read(self, size: int = -1) -> bytes:
        while not self._ended and (size < 0 or len(self._buffer) < size):
            self._buffer += self._next()
        cut = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        data = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        return data


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


def _file_name(name: Optional[str]) -> str:
    """The file's own name (a browser may send a path)."""
    found = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not found:
        raise BadRequest("choose a file to upload", code="invalid_upload")
    return found


@router.put("/buckets/{bucket}/upload")
async def upload_stream(bucket: str, request: Request, user: ConsoleUser, ctx: ContextDep,
                        name: str, prefix: str = ""):
    """The body is the file ``name``, stored under ``prefix`` as it arrives."""
    key, limit = prefix + _file_name(name), ctx.settings.console_upload_max_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise UploadTooLarge(f"the file is larger than the upload limit of {limit} bytes")
    body = _Body(request.stream(), asyncio.get_running_loop())
    size = await run_in_threadpool(
        _browser(ctx, user).upload, bucket, key, body, max_bytes=limit,
        content_type=request.headers.get("content-type") or None)
    return JSONResponse({"key": key, "size": size, "listing": _listing_url(bucket, prefix)},
                        status_code=201)


@router.post("/buckets/{bucket}/upload")
def upload(bucket: str, user: ConsoleUser, ctx: ContextDep,
           file: Annotated[UploadFile, File()], prefix: Annotated[str, Form()] = ""):
    """The form without script: parsed into a temporary file first (see above)."""
    _browser(ctx, user).upload(bucket, prefix + _file_name(file.filename), file.file,
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
