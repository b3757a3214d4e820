"""The only module that talks HTTP: one ``requests.Session``, retries, idempotency, error mapping.

Every REST call of the SDK goes through :meth:`HttpClient.request`. It

* joins the path to the base URL (the dialect has no version prefix);
* sends ``Authorization: <token>`` (the raw token, no ``Bearer``) and
  ``User-Agent: qcompute-sdk-python/<version>``, with the configured timeout;
* gives every POST and PATCH an ``Idempotency-Key`` (a fresh uuid4 per logical call; urllib3
  resends the same prepared request, so every retry carries the same key and the server
  replays its first answer instead of acting twice);
* retries with urllib3's :class:`~urllib3.util.retry.Retry`: read errors, and
  429/500/502/503/504 (and a 409 with ``Retry-After``: the same key still running), with capped
  exponential backoff and ``Retry-After`` honoured, each retry logged at INFO;
* fails fast when the cluster cannot be reached: a refused connection is retried twice, after
  0.25 s and 0.5 s (a server that restarts binds again within that), a connect timeout never
  (one already waited ``connect_timeout``, 5 s by default), and the error names the URL;
* maps an error reply once to the exception tree of :mod:`qcompute.exceptions`.
"""
from __future__ import annotations

import http.client
import logging
import time
import uuid
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.retry import Retry

from ._version import __version__
from .exceptions import (
    APIError,
    BadRequestError,
    ConflictError,
    NotEnoughCreditsException,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnauthorizedException,
)

__all__ = ["HttpClient", "USER_AGENT", "error_from_response", "join_path"]

logger = logging.getLogger(__name__)

USER_AGENT = f"qcompute-sdk-python/{__version__}"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# POST and PATCH are retried because they always carry an Idempotency-Key.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH"})
_KEYED_METHODS = frozenset({"POST", "PATCH"})
BACKOFF_MAX = 30.0  # seconds, cap of the exponential backoff
CONNECT_TIMEOUT = 5.0  # seconds to open a connection (the read timeout is separate)
REFUSED_RETRIES = 2  # a refused connection: retried at most twice ...
REFUSED_BACKOFF = 0.25  # ... after 0.25 s, then 0.5 s
RETRY_AFTER_MAX = 120.0  # seconds, cap of a server's Retry-After

_STATUS_ERRORS: Mapping[int, type[APIError]] = {
    400: BadRequestError,
    401: UnauthorizedException,
    402: NotEnoughCreditsException,
    403: UnauthorizedException,
    404: NotFoundError,
    409: ConflictError,
    422: BadRequestError,
    429: RateLimitedError,
}

# Indirection so tests can patch the waits between retries.
_sleep: Callable[[float], None] = time.sleep


class _Retry(Retry):
    """urllib3 Retry that logs each retry and sleeps through the patchable :data:`_sleep`.

    A 409 *with* ``Retry-After`` is retried too: the server's answer to a repeat of a request
    that still runs (``idempotency_key_in_use``); other 409s carry no ``Retry-After``."""

    RETRY_AFTER_STATUS_CODES = Retry.RETRY_AFTER_STATUS_CODES | {409}

    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        retry: Retry = self
        if isinstance(error, ConnectTimeoutError):
            # refused (NewConnectionError): a few quick tries; timed out: none, it already waited
            refused = isinstance(error, NewConnectionError)
            retry = self.new(connect=min(self.connect or 0, REFUSED_RETRIES) if refused else 0)
        new = Retry.increment(retry, method, url, response, error, *args, **kwargs)
        counts = [c for c in (new.total, new.connect, new.read, new.status)
                  if isinstance(c, int)]  # the tightest budget is the one that ends the tries
        logger.info("retrying %s %s after %s (%d tries left)", method, url,
                    error or (response.status if response is not None else "?"),
                    min(counts, default=-1))
        return new

    def _refused_backoff(self) -> Optional[float]:
        """The short wait after a refused connection, None after anything else."""
        if not self.history or not isinstance(self.history[-1].error, NewConnectionError):
            return None
        refused = sum(isinstance(h.error, NewConnectionError) for h in self.history)
        return REFUSED_BACKOFF * 2 ** (refused - 1)

    def sleep(self, response=None):  # type: ignore[no-untyped-def,override]
        seconds: Optional[float] = self._refused_backoff()
        if seconds is not None:
            _sleep(seconds)
            return
        if self.respect_retry_after_header and response is not None:
            seconds = self.get_retry_after(response)
            if seconds is not None:
                seconds = min(seconds, RETRY_AFTER_MAX)
        if seconds is None:
            seconds = self.get_backoff_time()
        if seconds > 0:
            _sleep(seconds)


def _refused(exc: requests.ConnectionError) -> bool:
    """The connection was never opened (refused, no route, unknown host)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, without urllib3's pool and retry wording."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, NewConnectionError):  # "...: Failed to establish a new connection: X"
        return str(reason).rsplit(": ", 1)[-1]
    if isinstance(exc, requests.ConnectTimeout):
        return "the connection timed out"
    return str(reason or exc)


def join_path(*segments: Any) -> str:
    """``join_path("tasks", uuid, "stdout")`` → ``/tasks/<uuid>/stdout``, each segment quoted."""
    return "".join("/" + quote(str(segment), safe="") for segment in segments)


def _message_and_code(response: requests.Response) -> tuple[str, Any]:
    """Read the error body: ``{"message","code"}``, ``{"error": ...}``, ASP.NET ``errors``, text."""
    message: Any = None
    code: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("code")
        message = body.get("message")
        error = body.get("error")
        if not message and isinstance(error, dict):
            message = error.get("message")
            code = code if code is not None else error.get("code")
        elif not message and error:
            message = error
        if not message and isinstance(body.get("errors"), dict):
            message = "; ".join(f"{field}: {', '.join(map(str, problems))}"
                                for field, problems in body["errors"].items())
    elif body is None:
        message = response.text.strip()
    if not message:
        message = response.reason or http.client.responses.get(response.status_code, "Error")
    return str(message), code


def error_from_response(
    response: requests.Response, not_found: Optional[type[NotFoundError]] = None,
    conflict: Optional[type[ConflictError]] = None,
) -> APIError:
    """Build the exception for an error reply.

    Args:
        response: a reply with a status of 400 or more.
        not_found: the :class:`NotFoundError` subclass to use for a 404.
        conflict: the :class:`ConflictError` subclass to use for a 409.
    """
    status = response.status_code
    if status == 404 and not_found is not None:
        cls: type[APIError] = not_found
    elif status == 409 and conflict is not None:
        cls = conflict
    elif status >= 500:
        cls = ServerError
    else:
        cls = _STATUS_ERRORS.get(status, APIError)
    message, code = _message_and_code(response)
    return cls(
        message,
        status_code=status,
        code=code,
        request_id=response.headers.get("X-Request-ID"),
    )


class HttpClient:
    """One ``requests.Session`` bound to one API base URL and token.

    Args:
        base_url: the API URL, without a trailing slash.
        token: the API token, sent raw in ``Authorization``.
        timeout: seconds for each read (a long poll adds its hold).
        connect_timeout: seconds to open a connection (capped by ``timeout``).
        retry_count: how many times a failed request is retried (0: never).
        retry_wait: the backoff factor in seconds (waits 0, 2w, 4w, ... capped at 30 s).
        verify: TLS verification: True, False, or a CA bundle path.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        retry_count: int = 5,
        retry_wait: float = 1.0,
        verify: Union[bool, str] = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.session = requests.Session()
        self.session.headers.update({"Authorization": token, "User-Agent": USER_AGENT})
        self.session.verify = verify
        retry = _Retry(
            total=retry_count,
            connect=retry_count,
            read=retry_count,
            status=retry_count,
            other=0,
            allowed_methods=RETRY_METHODS,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=retry_wait,
            backoff_max=BACKOFF_MAX,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        json: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        expect_json: bool = True,
        not_found: Optional[type[NotFoundError]] = None,
        conflict: Optional[type[ConflictError]] = None,
        hold: float = 0.0,
        with_headers: bool = False,
    ) -> Any:
        """Send one logical request (retried as configured) and decode the reply.

        Args:
            method: the HTTP method.
            path: the path after the base URL, starting with ``/`` (see :func:`join_path`).
            params: query parameters.
            json: a JSON body (object or array); ``None`` sends no body.
            headers: extra headers. POST and PATCH get an ``Idempotency-Key`` unless one is given.
            expect_json: decode the reply as JSON (``None`` for an empty body); False returns text.
            not_found: the exception class for a 404 (default :class:`NotFoundError`).
            conflict: the exception class for a 409 (default :class:`ConflictError`).
            hold: seconds the server may hold the reply (a long poll), added to the timeout.
            with_headers: return ``(body, headers)``, the reply's headers (case-insensitive).

        Returns:
            The decoded JSON, or the text when ``expect_json`` is False (with the headers when
            ``with_headers``).

        Raises:
            APIError: the server answered with an error status (a subclass chosen by status).
            TransportError: no answer (connection, timeout, TLS).
        """
        method = method.upper()
        all_headers = dict(headers or {})
        if method in _KEYED_METHODS and "Idempotency-Key" not in all_headers:
            all_headers["Idempotency-Key"] = str(uuid.uuid4())
        url = self.base_url + path
        logger.debug("%s %s", method, url)
        try:
            response = self.session.request(
                method, url, params=params, json=json, headers=all_headers,
                timeout=(self.connect_timeout, self.timeout + hold),
            )
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.ConnectTimeout) or _refused(exc):
                raise TransportError(
                    f"cannot reach the cluster at {self.base_url} ({method} {path}: "
                    f"{_reason(exc)}); is it running? `qcompute status` checks the "
                    "configured cluster") from exc
            raise TransportError(f"{method} {url} failed: {_reason(exc)}") from exc
        except requests.RequestException as exc:
            raise TransportError(f"{method} {url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response, not_found, conflict)
        if with_headers:
            return self._decode(method, url, response, expect_json), response.headers
        return self._decode(method, url, response, expect_json)

    @staticmethod
    def _decode(method: str, url: str, response: requests.Response, expect_json: bool) -> Any:
        if not expect_json:
            return response.text
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise APIError(
                f"{method} {url}: expected JSON, got {response.text[:200]!r}",
                status_code=response.status_code,
                request_id=response.headers.get("X-Request-ID"),
            ) from exc

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()
