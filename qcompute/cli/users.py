"""``qcompute user add | list``: manage users of the running cluster (owner only)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Optional

import click

from .cluster import client_config_default


def _call(config: str, method: str, path: str, body: Optional[dict] = None):
    import configparser

    parser = configparser.ConfigParser()
    if not parser.read(config):
        raise click.ClickException(f"no client config at {config}: run qcompute up first")
    url, token = parser.get("cluster", "url"), parser.get("client", "token")
    request = urllib.request.Request(
        url.rstrip("/") + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise click.ClickException(f"{exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach the cluster at {url}: {exc.reason}") from None


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
