"""``qcompute task list | show | logs | wait | explain | abort | delete | rerun-failed``,
through the SDK."""
from __future__ import annotations

from typing import Any, Optional

import click

from qcompute.states import TaskState

from ._common import (
    CliError,
    ExitCode,
    State,
    complete_task,
    document,
    emit,
    for_each,
    output_option,
    pass_state,
    print_table,
    state_name,
    uuids_argument,
    when,
)

_FAILED_STATES = ("Failure", "Cancelled")


@click.group()
def task() -> None:
    """List, inspect, wait for, abort and delete tasks."""


@task.command("list")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Only tasks with this tag (repeat: any of them; see --all-tags).")
@click.option("--all-tags", is_flag=True, help="Only tasks with every --tag.")
@click.option("--state", "states", multiple=True,
              type=click.Choice([s.value for s in TaskState if s is not TaskState.UNSUBMITTED],
                                case_sensitive=False),
              help="Only tasks in this state (repeat: any of them).")
@output_option
@pass_state
def list_(state: State, tags: tuple[str, ...], all_tags: bool, states: tuple[str, ...],
          output: str) -> None:
    """List tasks (JSON: the task summaries of POST /tasks/summaries/paginate)."""
    conn = state.connection()
    found = conn.tasks(tags=None if all_tags else list(tags) or None,
                       tags_intersect=list(tags) if all_tags else None, summary=True)
    wanted = {s.lower() for s in states}
    docs = [document(t) for t in found
            if not wanted or str(t._data.get("state", "")).lower() in wanted]
    emit(output, docs, lambda rows: print_table(
        ("UUID", "STATE", "CREATED", "NAME"),
        ((d.get("uuid"), d.get("state"), (d.get("creationDate") or "")[:19].replace("T", " "),
          d.get("name")) for d in rows)))


def _instances(task_: Any) -> list[dict[str, Any]]:
    """One row per instance known to be finished or running, by instance id."""
    rows: dict[int, dict[str, Any]] = {}
    for done in task_.completed_instances:
        rows[done.instance_id] = {
            "instance": done.instance_id, "state": state_name(done.state), "exitCode": done.exit_code,
            "attempts": done.execution_attempt_count, "wallTimeSec": done.wall_time_sec,
            "error": str(done.error) if done.error else None}
    for running in task_.running_instances:
        rows.setdefault(running.instance_id, {
            "instance": running.instance_id, "state": running.phase or "Running",
            "exitCode": None, "attempts": running.execution_attempt_count,
            "wallTimeSec": running.execution_time_sec, "error": None})
    return [rows[k] for k in sorted(rows)]


def _show(task_: Any) -> None:
    status = task_.status
    where = f"pool {task_.pool_uuid}" if task_.pool_uuid else f"profile {task_.profile}"
    count = task_.advanced_range or task_.instancecount
    lines = [
        ("uuid", task_.uuid), ("name", task_.name), ("state", state_name(task_.state)),
        ("runs on", where), ("job", task_.job_uuid), ("instances", count),
        ("tags", ", ".join(task_.tags)), ("created", when(task_.creation_date)),
        ("ended", when(task_.end_date)),
        ("progress", f"{task_.progress:g}%" if task_.progress is not None else None),
        ("succeeded", status.succeeded_range if status else None),
        ("failed", status.failed_range if status else None),
        ("wall time", task_.wall_time), ("results", task_.results.name if task_.results else None),
    ]
    for label, value in lines:
        if value not in (None, ""):
            click.echo(f"{label + ':':11}{value}")
    for error in task_.errors:
        click.echo(f"{'error:':11}{error}")
    instances = _instances(task_)
    if instances:
        click.echo()
        print_table(("INSTANCE", "STATE", "EXIT", "ATTEMPTS", "WALL(s)", "ERROR"),
                    ((i["instance"], i["state"], i["exitCode"], i["attempts"],
                      f"{i['wallTimeSec']:.1f}" if i["wallTimeSec"] is not None else None,
                      i["error"]) for i in instances))


@task.command("show")
@click.argument("uuid", shell_complete=complete_task)
@output_option
@pass_state
def show(state: State, uuid: str, output: str) -> None:
    """Show a task: its state, errors and instances (JSON: the document of GET
    /tasks/{uuid})."""
    task_ = state.connection().retrieve_task(uuid)
    emit(output, document(task_), lambda _: _show(task_))


def _print_logs(task_: Any, stream: str, instance: Optional[int], follow: bool) -> None:
    """Everything the task (or one instance) wrote so far on ``stream``; with ``follow``, then
    each new line until the task ends (:meth:`~qcompute.task.Task.follow`)."""
    if follow:
        for line in task_.follow(stream, instance):
            click.echo(line, err=stream == "stderr")
        return
    text = task_.stderr(instance) if stream == "stderr" else task_.stdout(instance)
    click.echo(text, nl=False, err=stream == "stderr")


@task.command("logs")
@click.argument("uuid", shell_complete=complete_task)
@click.option("--stderr", "stream", flag_value="stderr", help="Standard error instead.")
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@click.option("--instance", type=click.IntRange(min=0), metavar="N",
              help="Only instance N (default: every instance).")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines until the task ends.")
@pass_state
def logs(state: State, uuid: str, stream: str, instance: Optional[int], follow: bool) -> None:
    """Print a task's output so far (standard error goes to stderr); with -f, follow it."""
    _print_logs(state.connection().retrieve_task(uuid), stream, instance, follow)


@task.command("wait")
@click.argument("uuid", shell_complete=complete_task)
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Give up after this long (exit code 6).")
@output_option
@pass_state
def wait(state: State, uuid: str, timeout: Optional[float], output: str) -> None:
    """Wait until a task ends. Exit code 0 for Success, 1 for Failure or Cancelled, 6 when
    --timeout passes first."""
    task_ = state.connection().retrieve_task(uuid)
    if not task_.wait(timeout=timeout):
        raise CliError(f"task {uuid} is still {state_name(task_.state)} after {timeout:g} s",
                       ExitCode.TIMEOUT)
    final = state_name(task_.state)
    emit(output, document(task_), lambda _: click.echo(f"{uuid} {final}"))
    if final in _FAILED_STATES:
        errors = "; ".join(str(e) for e in task_.errors)
        raise CliError(f"task {uuid} ended in {final}" + (f": {errors}" if errors else ""),
                       ExitCode.FAILED)


@task.command("explain")
@click.argument("uuid", shell_complete=complete_task)
@output_option
@pass_state
def explain(state: State, uuid: str, output: str) -> None:
    """Say why a task is not running yet: capacity (and how many instances are ahead), a
    pool, a dependency, a hardware constraint, a queue timeout coming up (JSON: the document
    of GET /tasks/{uuid}/explain)."""
    explanation = state.connection().retrieve_task(uuid).explain()
    emit(output, explanation.to_json(), lambda _: click.echo(str(explanation)))


@task.command("rerun-failed")
@click.argument("uuid", shell_complete=complete_task)
@output_option
@pass_state
def rerun_failed(state: State, uuid: str, output: str) -> None:
    """Run the failed instances of a finished task again, as a new task with the same
    definition; prints the new task's uuid (JSON: its document)."""
    rerun = state.connection().retrieve_task(uuid).rerun_failed()
    emit(output, document(rerun), lambda _: click.echo(
        f"{rerun.uuid} re-runs instances {rerun.advanced_range} of {uuid}"))


@task.command("abort")
@uuids_argument(complete_task)
@pass_state
def abort(state: State, uuids: tuple[str, ...]) -> None:
    """Cancel tasks."""
    for_each(uuids, state.connection().retrieve_task, lambda t: state_name(t.abort().state))


@task.command("delete")
@uuids_argument(complete_task)
@click.option("--purge-resources", is_flag=True, help="Also delete the resource buckets.")
@click.option("--purge-results", is_flag=True, help="Also delete the result bucket.")
@pass_state
def delete(state: State, uuids: tuple[str, ...], purge_resources: bool,
           purge_results: bool) -> None:
    """Delete tasks (a running task is cancelled first)."""
    for_each(uuids, state.connection().retrieve_task, lambda t: t.delete(
        purge_resources=purge_resources, purge_results=purge_results) or "deleted")
