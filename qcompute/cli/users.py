"""``qcompute user add | list | rotate | remove``: manage users of the running cluster (owner
only)."""
from __future__ import annotations

import configparser
import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import click

from .cluster import client_config_default


def _call(config: str, method: str, path: str, body: Optional[dict] = None,
          params: Optional[dict] = None) -> Any:
    """One request to the cluster as the config's user, through the SDK's HTTP client."""
    from qcompute.connection import Connection
    from qcompute.exceptions import QComputeError

    if not Path(config).is_file():
        raise click.ClickException(f"no client config at {config}: run qcompute up first")
    try:
        with Connection(fileconf=config) as conn:
            return conn._http.request(method, path, json=body, params=params)
    except QComputeError as exc:
        raise click.ClickException(str(exc)) from None


_config_option = click.option("--config", default=client_config_default,
                              show_default="$QCOMPUTE_CONFIG or the SDK default",
                              help="The owner's client config.")


def _user_path(email: str) -> str:
    return f"/admin/users/{quote(email, safe='@')}"


def _print_account(account: dict) -> None:
    click.echo(f"email:         {account['email']}")
    click.echo(f"token:         {account['token']}")
    click.echo(f"bucket prefix: {account['bucketPrefix'] or '(any bucket name)'}")


def _replace_token(config: str, token: str) -> bool:
    """Put ``token`` in the config file's ``[client]`` section; False if it has none."""
    parser = configparser.ConfigParser()
    parser.read(config)
    if not parser.has_option("client", "token"):
        return False
    parser.set("client", "token", token)
    tmp = f"{config}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        parser.write(handle)
    os.replace(tmp, config)
    return True


@click.group()
def user() -> None:
    """Manage users (needs the owner's config, as written by qcompute up)."""


@user.command("add")
@click.argument("email")
@click.option("--allow-unsandboxed", is_flag=True,
              help="Add the user even though this cluster runs instances unsandboxed (any "
                   "user's task could then read every other user's data).")
@_config_option
def add(email: str, allow_unsandboxed: bool, config: str) -> None:
    """Create a user and print their token (shown only once)."""
    body = {"email": email, **({"allowUnsandboxed": True} if allow_unsandboxed else {})}
    _print_account(_call(config, "POST", "/admin/users", body))


@user.command("list")
@_config_option
def list_(config: str) -> None:
    """List users."""
    for entry in _call(config, "GET", "/admin/users"):
        role = "owner" if entry["isOwner"] else f"buckets {entry['bucketPrefix']}*"
        click.echo(f"{entry['email']:40} {role}")


@user.command("rotate")
@click.argument("email")
@_config_option
def rotate(email: str, config: str) -> None:
    """Give a user a new token (shown only once); the old one stops working at once, for the
    API and as S3 secret key."""
    rotated = _call(config, "POST", f"{_user_path(email)}/token")
    _print_account(rotated)
    if rotated["isOwner"]:  # the owner rotated its own token: keep this config usable
        if _replace_token(config, rotated["token"]):
            click.echo(f"the token in {config} was updated")
        else:
            click.echo(f"put the new token in your client config ({config} has none)")


@user.command("remove")
@click.argument("email")
@click.option("--force", is_flag=True,
              help="Also cancel the user's unfinished tasks (refused otherwise).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_config_option
def remove(email: str, force: bool, yes: bool, config: str) -> None:
    """Remove a user: their token and S3 keys stop working at once and their tasks are deleted.
    Their buckets are kept (the owner can still reach them)."""
    if not yes:
        click.confirm(f"Remove {email}, revoke their keys and delete their tasks?", abort=True)
    params = {"force": "true"} if force else None
    removed = _call(config, "DELETE", _user_path(email), params=params)
    click.echo(f"removed {removed['email']}: keys revoked, {removed['deletedTasks']} task(s) "
               f"deleted; buckets {removed['bucketPrefix']}* kept")
