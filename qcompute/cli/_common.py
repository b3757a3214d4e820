"""What the object commands share: one connection per invocation (from ``--profile``), the
``-o json`` output, and exit codes mapped once from the SDK's exceptions."""
from __future__ import annotations

import enum
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

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
    if isinstance(exc, e.StorageError) and getattr(exc, "code", None) == "InvalidBucketName":
        return ExitCode.USAGE
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


def document(obj: Any) -> dict:
    """The wire document of a task, pool or job as the server last sent it (the ``-o json``
    shape of ``show`` and ``list``)."""
    return dict(obj._data)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Aligned columns, for people (``None`` shows as empty)."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def state_name(state: Any) -> str:
    """A state enum's wire name (an unknown state stays the string it is)."""
    return str(getattr(state, "value", state) or "")


def uuids_argument(complete: Callable) -> Callable:
    """The ``UUID...`` argument of the commands that act on several objects."""
    return click.argument("uuids", nargs=-1, required=True, metavar="UUID...",
                          shell_complete=complete)


def for_each(uuids: Iterable[str], retrieve: Callable[[str], Any],
             act: Callable[[Any], Any]) -> None:
    """Act on each object in turn, printing ``<uuid> <what act returned>``; the first error
    stops the run (the objects before it are done)."""
    for uuid in uuids:
        click.echo(f"{uuid} {act(retrieve(uuid))}")


def when(value: Any) -> str:
    """A datetime as ``YYYY-MM-DD HH:MM:SS`` (UTC as sent), or empty."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else (value or "")


def progress_option(func: Callable) -> Callable:
    """``--progress/--no-progress``: tqdm bars on stderr (default: when stderr is a terminal)."""
    return click.option("--progress/--no-progress", default=None,
                        help="Show progress bars on stderr [default: when it is a terminal].")(func)


def want_progress(progress: Optional[bool]) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _complete(ctx: click.Context, incomplete: str,
              names: Callable[["Connection"], Iterable[tuple[str, str]]]) -> list:
    """Completion items from the cluster; nothing (quietly) when it cannot be asked."""
    from click.shell_completion import CompletionItem

    try:
        from qcompute.connection import Connection

        profile = ctx.find_root().params.get("profile")
        with Connection(profile=profile, retry_count=0, cluster_timeout=3) as conn:
            return [CompletionItem(value, help=text) for value, text in names(conn)
                    if value.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never print a traceback in a shell
        return []


def complete_task(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    return _complete(ctx, incomplete,
                     lambda conn: ((t.uuid, t.name) for t in conn.tasks(summary=True)))


def complete_pool(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    return _complete(ctx, incomplete,
                     lambda conn: ((p.uuid, p.name) for p in conn.all_pools(summary=True)))


def complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    return _complete(ctx, incomplete, lambda conn: ((j.uuid, j.name) for j in conn.all_jobs()))


def complete_bucket(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    return _complete(ctx, incomplete, lambda conn: ((b.name, "") for b in conn.buckets()))
