"""``qcompute user add | list``: manage users of the running cluster (owner only)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from .cluster import client_config_default


def _call(config: str, method: str, path: str, body: Optional[dict] = None) -> Any:
    """One request to the cluster as the config's user, through the SDK's HTTP client."""
    from qcompute.connection import Connection
    from qcompute.exceptions import QComputeError

    if not Path(config).is_file():
        raise click.ClickException(f"no client config at {config}: run qcompute up first")
    try:
        with Connection(fileconf=config) as conn:
            return conn._http.request(method, path, json=body)
    except QComputeError as exc:
        raise click.ClickException(str(exc)) from None


_config_option = click.option("--config", default=client_config_default,
                              show_default="$QCOMPUTE_CONFIG or the SDK default",
                              help="The owner's client config.")


@click.group()
def user() -> None:
    """Manage users (needs the owner's config, as written by qcompute up)."""


@user.command("add")
@click.argument("email")
@_config_option
def add(email: str, config: str) -> None:
    """Create a user and print their token (shown only once)."""
    created = _call(config, "POST", "/admin/users", {"email": email})
    click.echo(f"email:         {created['email']}")
    click.echo(f"token:         {created['token']}")
    click.echo(f"bucket prefix: {created['bucketPrefix'] or '(any bucket name)'}")


@user.command("list")
@_config_option
def list_(config: str) -> None:
    """List users."""
    for entry in _call(config, "GET", "/admin/users"):
        role = "owner" if entry["isOwner"] else f"buckets {entry['bucketPrefix']}*"
        click.echo(f"{entry['email']:40} {role}")
