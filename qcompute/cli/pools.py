"""``qcompute pool list | show | close | delete``, through the SDK."""
from __future__ import annotations

from typing import Any

import click

from ._common import (
    State,
    complete_pool,
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
def pool() -> None:
    """List, inspect, close and delete pools."""


@pool.command("list")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Only pools with this tag (repeat: any of them).")
@output_option
@pass_state
def list_(state: State, tags: tuple[str, ...], output: str) -> None:
    """List pools (JSON: the pool summaries of POST /pools/summaries/paginate)."""
    docs = [document(p) for p in state.connection().all_pools(tags=list(tags) or None,
                                                              summary=True)]
    emit(output, docs, lambda rows: print_table(
        ("UUID", "STATE", "NODES", "CREATED", "NAME"),
        ((d.get("uuid"), d.get("state"), d.get("instanceCount"),
          (d.get("creationDate") or "")[:19].replace("T", " "), d.get("name")) for d in rows)))


def _show(pool_: Any) -> None:
    size = (f"elastic {pool_.elastic_minimum_total_slots}-{pool_.elastic_maximum_total_slots}"
            if pool_.is_elastic else pool_.instancecount)
    for label, value in (
            ("uuid", pool_.uuid), ("name", pool_.name), ("state", state_name(pool_.state)),
            ("profile", pool_.profile), ("nodes", size),
            ("slots", pool_.total_slot_capacity), ("running", pool_.running_instance_count),
            ("tags", ", ".join(pool_.tags)), ("created", when(pool_.creation_date)),
            ("ended", when(pool_.end_date))):
        if value not in (None, ""):
            click.echo(f"{label + ':':9}{value}")
    for error in pool_.errors:
        click.echo(f"{'error:':9}{error}")


@pool.command("show")
@click.argument("uuid", shell_complete=complete_pool)
@output_option
@pass_state
def show(state: State, uuid: str, output: str) -> None:
    """Show a pool (JSON: the document of GET /pools/{uuid})."""
    pool_ = state.connection().retrieve_pool(uuid)
    emit(output, document(pool_), lambda _: _show(pool_))


@pool.command("close")
@uuids_argument(complete_pool)
@pass_state
def close(state: State, uuids: tuple[str, ...]) -> None:
    """Close pools: their unfinished tasks are cancelled and their nodes released."""
    for_each(uuids, state.connection().retrieve_pool, lambda p: state_name(p.close().state))


@pool.command("delete")
@uuids_argument(complete_pool)
@click.option("--purge-resources", is_flag=True, help="Also delete the resource buckets.")
@pass_state
def delete(state: State, uuids: tuple[str, ...], purge_resources: bool) -> None:
    """Delete pools."""
    for_each(uuids, state.connection().retrieve_pool,
             lambda p: p.delete(purge_resources=purge_resources) or "deleted")
