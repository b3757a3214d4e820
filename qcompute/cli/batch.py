"""``qcompute validate FILE`` and ``qcompute submit FILE [--wait]``: batch files (see
docs/batch.rst)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

import click

from ._common import CliError, ExitCode, State, pass_state

if TYPE_CHECKING:
    from qcompute.batch import BatchRun, Problem

POLL_SECONDS = 1.0  # how often --wait refreshes the states and reads fresh output


def _checked(state: State, file: str, offline: bool = False):
    """The file's batch once every check passed; else the problems are printed and the command
    ends with USAGE (or UNREACHABLE when only the cluster could not be asked)."""
    from qcompute.batch import check_file
    from qcompute.batch.checks import unreachable

    conn = None if offline else state.connection()
    batch, problems = check_file(file, conn)
    if not problems:
        return batch
    _print_problems(file, problems)
    if unreachable(problems) and len(problems) == 1:
        raise CliError(f"{file}: the cluster could not be reached (run `qcompute status`; "
                       "`--offline` checks the file alone)", ExitCode.UNREACHABLE)
    count = len(problems)
    raise CliError(f"{file}: {count} problem{'s' if count != 1 else ''}", ExitCode.USAGE)


def _print_problems(file: str, problems: list["Problem"]) -> None:
    for problem in problems:
        click.echo(problem.render(file), err=True)


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--schema", is_flag=True, help="Print the JSON Schema of batch files and exit.")
@click.option("--offline", is_flag=True,
              help="Only the checks that need no cluster (no profiles, hardware, secrets or "
                   "bucket prefix).")
@pass_state
def validate(state: State, file: Optional[str], schema: bool, offline: bool) -> None:
    """Check a batch FILE before anything runs, and list every problem with its line or key
    path: the file's structure, duplicate task names, unknown dependencies and cycles, missing
    local directories, commands that do not parse, bucket names; then, against the cluster,
    unknown profiles, unsatisfiable hardware constraints, missing secrets and bucket names
    outside your prefix. Exits 2 when there is a problem."""
    if schema:
        from qcompute.batch.models import schema as batch_schema

        click.echo(json.dumps(batch_schema(), indent=2))
        return
    if file is None:
        raise click.UsageError("give a batch FILE (or --schema)")
    batch = _checked(state, file, offline)
    where = "offline" if offline else f"against {state.connection().cluster_url}"
    click.echo(f"{file}: ok ({len(batch.tasks)} tasks, checked {where})")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--wait", "wait_", is_flag=True,
              help="Follow the tasks (states and output) until they end, then download the "
                   "results; exit 1 if a task failed.")
@click.option("--no-progress", is_flag=True, help="No upload and download progress bars.")
@pass_state
def submit(state: State, file: str, wait_: bool, no_progress: bool) -> None:
    """Check a batch FILE, upload its local directories, create its pool, and submit its tasks
    as one job."""
    from qcompute.batch.submit import submit_batch

    batch = _checked(state, file)
    progress = None if no_progress else True
    run = submit_batch(state.connection(), batch, progress=progress)
    click.echo(f"job {run.job.uuid} ({batch.name}): {len(run.tasks)} tasks")
    width = max(len(name) for name in run.tasks)
    for name, task in run.tasks.items():
        click.echo(f"  {name:<{width}}  {task.uuid}")
    if not wait_:
        return
    try:
        _follow(run)
    except KeyboardInterrupt:
        click.echo(f"stopped following; job {run.job.uuid} keeps running", err=True)
        raise
    _finish(run, progress)


def _follow(run: "BatchRun") -> None:
    """Print each task's state when it changes, and its new output prefixed with its name
    (offset reads: another reader's "fresh" cursor is left alone), until every task is final.
    Plain lines: readable in a terminal and in a log file."""
    from qcompute._follow import OutputCursor
    from qcompute.states import TaskState

    seen: dict[str, object] = {}
    drained: set[str] = set()
    tails: dict[tuple[str, str], str] = {}
    cursors = {(name, stream): OutputCursor(task, stream) for name, task in run.tasks.items()
               for stream in ("stdout", "stderr")}
    width = max(len(name) for name in run.tasks)
    while True:
        done = run.wait(timeout=POLL_SECONDS)
        for name, task in run.tasks.items():
            now = task._data.get("state")
            if now != seen.get(name):
                seen[name] = now
                click.echo(f"{name:<{width}} > {now}")
            if name in drained or now in (None, TaskState.SUBMITTED.value):
                continue
            try:
                final = TaskState(now).is_final()
            except ValueError:  # a state this SDK does not know: not final
                final = False
            for stream in ("stdout", "stderr"):
                text = cursors[(name, stream)].read()
                _echo_lines(name, width, stream, text, tails, flush=final)
            if final:
                drained.add(name)
        if done:
            return


def _echo_lines(name: str, width: int, stream: str, text: str,
                tails: dict[tuple[str, str], str], *, flush: bool) -> None:
    """Print the complete lines of ``text`` (after what was kept of the last read), each
    prefixed with the task's name; an incomplete last line waits for the next read."""
    text = tails.pop((name, stream), "") + text
    lines = text.split("\n")
    tail = lines.pop()
    if tail and not flush:
        tails[(name, stream)] = tail
    elif tail:
        lines.append(tail)
    for line in lines:
        click.echo(f"{name:<{width}} | {line}", err=stream == "stderr")


def _finish(run: "BatchRun", progress: Optional[bool]) -> None:
    """The summary, the results download, the pool closed; exit 1 if a task failed."""
    click.echo("")
    width = max(len(name) for name in run.tasks)
    for name, task in run.tasks.items():
        errors = task._data.get("errors") or []
        why = f"  ({errors[0].get('message')})" if errors else ""
        click.echo(f"{name:<{width}}  {task._data.get('state')}{why}")
    target = run.download_results(progress=progress)
    if target is not None:
        click.echo(f"results downloaded to {target}")
    if run.pool is not None:
        run.pool.close()
    failed, skipped = run.failed, run.skipped
    note = f" (skipped, their dependencies unmet: {', '.join(skipped)})" if skipped else ""
    if failed:
        raise CliError(f"{len(failed)} of {len(run.tasks)} tasks failed: {', '.join(failed)}"
                       + note, ExitCode.FAILED)
    click.echo(f"every task succeeded{note}")
