"""The one exception tree of the qcompute SDK.

Every error the SDK raises derives from :class:`QComputeError`. HTTP errors are mapped once, in
``qcompute._http``, from the status code (and a caller-chosen 404 subclass); S3 errors are mapped
once, in ``qcompute._storage``. The Qarnot names are kept, so code written for the official
``qarnot`` SDK catches the same classes::

    QComputeError (alias QarnotException)
    ├── APIError (alias QarnotGenericException): status_code, code, message, request_id, details
    │   ├── BadRequestError                  400, 422
    │   ├── UnauthorizedException            401, 403
    │   ├── NotEnoughCreditsException        402
    │   ├── NotFoundError                    404
    │   │   ├── MissingTaskException
    │   │   ├── MissingTaskInstanceException
    │   │   ├── MissingProfileException
    │   │   ├── MissingBucketException       (also S3 NoSuchBucket)
    │   │   ├── MissingPoolException
    │   │   ├── MissingPoolInstanceException
    │   │   ├── MissingJobException
    │   │   └── SecretNotFoundException
    │   ├── ConflictError                    409
    │   │   └── SecretConflictException
    │   ├── RateLimitedError                 429
    │   └── ServerError                      5xx
    ├── TransportError                       connection refused, reset, timeout, TLS (wraps requests)
    ├── ConfigError                          no token, unreadable file, bad value
    │   └── BatchError                       an invalid batch file: every problem listed
    ├── StorageError                         S3 failure (wraps botocore ClientError)
    ├── ResourceStateError                   misuse: abort() before submit(), submit() twice ...
    ├── TaskFailedError                      run(check=True), raise_for_state(): Failure, Cancelled
    ├── WaitTimeout                          also a TimeoutError
    └── FieldError                           also an AttributeError
        └── ReadOnlyFieldError               read-only field, or fixed once submitted
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "QComputeError",
    "QarnotException",
    "APIError",
    "QarnotGenericException",
    "BadRequestError",
    "UnauthorizedException",
    "NotEnoughCreditsException",
    "NotFoundError",
    "MissingTaskException",
    "MissingTaskInstanceException",
    "MissingProfileException",
    "MissingBucketException",
    "MissingPoolException",
    "MissingPoolInstanceException",
    "MissingJobException",
    "SecretNotFoundException",
    "ConflictError",
    "SecretConflictException",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "ConfigError",
    "BatchError",
    "StorageError",
    "ResourceStateError",
    "TaskFailedError",
    "WaitTimeout",
    "FieldError",
    "ReadOnlyFieldError",
]


class QComputeError(Exception):
    """Root of every error raised by the SDK."""


QarnotException = QComputeError


class APIError(QComputeError):
    """The API answered with an error status.

    Attributes:
        status_code: the HTTP status (``None`` when the error did not come from one response).
        code: the server's error code (``{"code": ...}`` in the body), if any.
        message: the server's message, or the HTTP reason phrase when the body had none.
        request_id: the ``X-Request-ID`` response header, if any.
        details: extra facts (for example the failed items of a bulk submission).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        code: Any = None,
        request_id: Optional[str] = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.details = details

    def __str__(self) -> str:
        facts = [f"HTTP {self.status_code}"] if self.status_code is not None else []
        if self.code not in (None, ""):
            facts.append(f"code={self.code}")
        if self.request_id:
            facts.append(f"request_id={self.request_id}")
        return f"{self.message} ({', '.join(facts)})" if facts else self.message


QarnotGenericException = APIError


class BadRequestError(APIError):
    """400 or 422: the server refused the request as invalid."""


class UnauthorizedException(APIError):
    """401 or 403: the token is missing, wrong, or not allowed to do this."""


class NotEnoughCreditsException(APIError):
    """402: the account cannot pay for this."""


class NotFoundError(APIError):
    """404: the object does not exist (or belongs to someone else)."""


class MissingTaskException(NotFoundError):
    """No such task."""


class MissingTaskInstanceException(NotFoundError):
    """No such instance in this task."""


class MissingProfileException(NotFoundError):
    """No such profile."""


class MissingBucketException(NotFoundError):
    """No such bucket (S3 ``NoSuchBucket``, or a 404 when a task names one)."""


class MissingPoolException(NotFoundError):
    """No such pool."""


class MissingPoolInstanceException(NotFoundError):
    """No such instance in this pool."""


class MissingJobException(NotFoundError):
    """No such job."""


class SecretNotFoundException(NotFoundError):
    """No secret under this key."""


class ConflictError(APIError):
    """409: the request conflicts with the current state (for example a reused key)."""


class SecretConflictException(ConflictError):
    """A secret already exists under this key."""


class RateLimitedError(APIError):
    """429, still refused after the retries."""


class ServerError(APIError):
    """5xx, still failing after the retries."""


class TransportError(QComputeError):
    """The request never got an HTTP answer: connection refused or reset, timeout, TLS error."""


class ConfigError(QComputeError):
    """The configuration is incomplete or invalid."""


class BatchError(ConfigError):
    """A batch file that cannot run (see :mod:`qcompute.batch`).

    Attributes:
        problems: every problem found (:class:`qcompute.batch.Problem`: key path, line,
            message), not only the first.
        path: the file.
    """

    def __init__(self, path: Any, problems: list[Any]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        listed = "\n".join("  " + p.render(self.path) for p in self.problems)
        count = len(self.problems)
        super().__init__(f"{self.path}: {count} problem{'s' if count != 1 else ''}\n{listed}")


class StorageError(QComputeError):
    """An S3 operation failed.

    Attributes:
        code: the S3 error code (``AccessDenied``, ``SlowDown`` ...), if any.
        operation: the S3 operation that failed, if known.
    """

    def __init__(
        self, message: str, *, code: Optional[str] = None, operation: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.operation = operation


class ResourceStateError(QComputeError):
    """The call does not fit the object's state (for example ``abort()`` on an unsubmitted task)."""


class TaskFailedError(QComputeError):
    """A task ended in Failure or Cancelled (``run(check=True)``, ``task.raise_for_state()``).

    Attributes:
        task: the :class:`~qcompute.Task`.
        state: its final state (``TaskState.FAILURE`` or ``TaskState.CANCELLED``).
        errors: its errors (a list of :class:`~qcompute.Error`), maybe empty.
        stderr_tail: the last lines of its standard error (20 by default), maybe empty.
    """

    def __init__(self, task: Any, state: Any, errors: list, stderr_tail: str) -> None:
        self.task = task
        self.state = state
        self.errors = errors
        self.stderr_tail = stderr_tail
        super().__init__(self.__str__())

    def __str__(self) -> str:
        state = getattr(self.state, "value", self.state)
        data = getattr(self.task, "_data", {})
        lines = [f"task {data.get('name')!r} ({data.get('uuid')}) ended in {state}"]
        lines += [f"  error: {error}" for error in self.errors[:5]]
        if len(self.errors) > 5:
            lines.append(f"  ... and {len(self.errors) - 5} more errors (see .errors)")
        if self.stderr_tail:
            tail = self.stderr_tail.splitlines()
            lines.append(f"  last {len(tail)} lines of stderr:")
            lines += [f"    {line}" for line in tail]
        return "\n".join(lines)


class WaitTimeout(QComputeError, TimeoutError):
    """A bounded wait ran out of time."""


class FieldError(QComputeError, AttributeError):
    """A field was given a value it cannot take."""


class ReadOnlyFieldError(FieldError):
    """The field is read-only, or cannot change once the object was submitted."""
