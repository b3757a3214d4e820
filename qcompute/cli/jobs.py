"""``qcompute job list | show | terminate | delete``, through the SDK."""
from __future__ import annotations

from typing import Any

import click

from ._common import (
    State,
    complete_job,
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


@click.group()
def job() -> None:
    """List, inspect, terminate and delete jobs."""


@job.command("list")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Only jobs with this tag (repeat: any of them).")
@output_option
@pass_state
def list_(state: State, tags: tuple[str, ...], output: str) -> None:
    """List jobs (JSON: the documents of POST /jobs/paginate)."""
    docs = [document(j) for j in state.connection().all_jobs(tags=list(tags) or None)]
    emit(output, docs, lambda rows: print_table(
        ("UUID", "STATE", "CREATED", "NAME"),
        ((d.get("uuid"), d.get("state"), (d.get("creationDate") or "")[:19].replace("T", " "),
          d.get("name")) for d in rows)))


@job.command("show")
@click.argument("uuid", shell_complete=complete_job)
@output_option
@pass_state
def show(state: State, uuid: str, output: str) -> None:
    """Show a job and its tasks (JSON: the document of GET /jobs/{uuid} with a "tasks"
    list of {"uuid", "name", "state"})."""
    job_ = state.connection().retrieve_job(uuid)
    tasks = [{"uuid": t.uuid, "name": t.name, "state": state_name(t.state)} for t in job_.tasks()]

    def table(_: Any) -> None:
        for label, value in (
                ("uuid", job_.uuid), ("name", job_.name), ("state", state_name(job_.state)),
                ("pool", job_.pool_uuid), ("depends", "yes" if job_.use_dependencies else "no"),
                ("created", when(job_.creation_date)), ("ended", when(job_.end_date))):
            if value not in (None, ""):
                click.echo(f"{label + ':':9}{value}")
        if tasks:
            click.echo()
            print_table(("TASK", "STATE", "NAME"),
                        ((t["uuid"], t["state"], t["name"]) for t in tasks))

    emit(output, {**document(job_), "tasks": tasks}, table)


@job.command("terminate")
@uuids_argument(complete_job)
@pass_state
def terminate(state: State, uuids: tuple[str, ...]) -> None:
    """Terminate jobs: their remaining tasks are cancelled."""
    for_each(uuids, state.connection().retrieve_job, lambda j: state_name(j.terminate().state))


@job.command("delete")
@uuids_argument(complete_job)
@click.option("--force", is_flag=True, help="Cancel the job's running tasks first.")
@pass_state
def delete(state: State, uuids: tuple[str, ...], force: bool) -> None:
    """Delete jobs."""
    for_each(uuids, state.connection().retrieve_job,
             lambda j: j.delete(force=force) or "deleted")
