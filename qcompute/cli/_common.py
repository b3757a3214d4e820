"""What the object commands share: one connection per invocation (from ``--profile``), the
``-o json`` output, and exit codes mapped once from the SDK's exceptions."""
from __future__ import annotations

import enum
import json
from typing import TYPE_CHECKING, Any, Callable, Optional

import click

if TYPE_CHECKING:
    from qcompute.connection import Connection


class ExitCode(enum.IntEnum):
    """The exit codes scripts can rely on (docs/cli.rst lists them)."""

    OK = 0
    FAILED = 1  # a task ended in Failure or Cancelled, or an error without a code of its own
    USAGE = 2  # bad arguments or config, an invalid batch file, a request the server refused
    NOT_FOUND = 3  # no such task, pool, job, bucket or profile
    UNREACHABLE = 4  # the cluster did not answer
    UNAUTHORIZED = 5  # the token was refused
    TIMEOUT = 6  # --timeout passed before the end
    INTERRUPTED = 130  # Ctrl-C


class CliError(click.ClickException):
    """An error shown as ``Error: <message>`` and ended with its :class:`ExitCode`."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = int(code)


def exit_code_of(exc: BaseException) -> ExitCode:
    """The exit code of an SDK exception."""
    from qcompute import exceptions as e

    for kind, code in ((e.NotFoundError, ExitCode.NOT_FOUND),
                       (e.UnauthorizedException, ExitCode.UNAUTHORIZED),
                       (e.TransportError, ExitCode.UNREACHABLE),
                       (e.WaitTimeout, ExitCode.TIMEOUT),
                       (e.ConfigError, ExitCode.USAGE),
                       (e.BadRequestError, ExitCode.USAGE)):
        if isinstance(exc, kind):
            return code
    return ExitCode.FAILED


class Group(click.Group):
    """A group whose commands' SDK errors and Ctrl-C end with a message and an exit code, not a
    traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from qcompute.exceptions import QComputeError

        try:
            return super().invoke(ctx)
        except QComputeError as exc:
            raise CliError(str(exc), exit_code_of(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(ExitCode.INTERRUPTED)


class State:
    """The invocation's options, and its connection, opened on first use."""

    def __init__(self, profile: Optional[str] = None) -> None:
        self.profile = profile
        self._conn: Optional["Connection"] = None

    def connection(self) -> "Connection":
        if self._conn is None:
            from qcompute.connection import Connection

            self._conn = Connection(profile=self.profile) if self.profile else Connection()
            click.get_current_context().call_on_close(self._conn.close)
        return self._conn


pass_state = click.make_pass_decorator(State, ensure=True)


def output_option(func: Callable) -> Callable:
    """``-o table|json`` on a read command."""
    return click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
                        show_default=True, help="Output format.")(func)


def emit(output: str, data: Any, table: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON (``-o json``), or through ``table`` for people."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        table(data)
