"""``qcompute login URL``: check a token against a cluster, then save it in the client config."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import click

from ._common import CliError, ExitCode, State, pass_state
from .cluster import client_config_default

CHECK_TIMEOUT = 10.0  # seconds for the GET /info that checks the token


def _check(url: str, token: str) -> str:
    """The account's email (``GET /info``), or a CliError: refused token, unreachable URL."""
    from qcompute._http import HttpClient
    from qcompute.exceptions import TransportError, UnauthorizedException

    http = HttpClient(url, token, timeout=CHECK_TIMEOUT, retry_count=0)
    try:
        info = http.get("/info") or {}
    except UnauthorizedException as exc:
        raise CliError(f"{url} refused this token ({exc}); nothing was written",
                       ExitCode.UNAUTHORIZED) from None
    except TransportError as exc:
        raise CliError(f"cannot reach {url} ({exc}); check the URL, or run qcompute status on "
                       "the cluster's host; nothing was written", ExitCode.UNREACHABLE) from None
    finally:
        http.close()
    return str(info.get("email") or "?") if isinstance(info, dict) else "?"


def save_login(path: Path, url: str, token: str, profile: Optional[str]) -> str:
    """Put the URL and token in ``[profile NAME]`` (or the plain ``[cluster]``/``[client]``
    sections), keeping every other section, key and comment; the file gets mode 0600.
    Returns the section written."""
    from configupdater import ConfigUpdater

    updater = ConfigUpdater()
    if path.exists():
        updater.read(str(path), encoding="utf-8")
    if profile:
        values = {f"profile {profile}": {"cluster_url": url, "client_token": token}}
    else:
        values = {"cluster": {"url": url}, "client": {"token": token}}
    for section, keys in values.items():
        if not updater.has_section(section):
            updater.add_section(section)
        for key, value in keys.items():
            updater[section][key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(str(updater))
    os.replace(tmp, path)
    return ", ".join(f"[{s}]" for s in values)


@click.command()
@click.argument("url")
@click.option("--token", help="The API token [default: asked, not echoed].")
@click.option("--profile", "name", metavar="NAME",
              help="Write [profile NAME] [default: the global --profile, else the plain "
                   "[cluster] and [client] sections].")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path),
              default=client_config_default,
              show_default="$QCOMPUTE_CONFIG or the SDK default",
              help="The client config file to write.")
@pass_state
def login(state: State, url: str, token: Optional[str], name: Optional[str],
          config: Path) -> None:
    """Check a token against the cluster at URL (GET /info), then save both in the client
    config. Exit code 5 if the token is refused, 4 if URL does not answer."""
    from qcompute.config import _parse_url

    try:
        url = _parse_url(url)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    if token is None:
        token = click.prompt("Token", hide_input=True)
    token = token.strip()
    if not token:
        raise CliError("the token is empty", ExitCode.USAGE)
    email = _check(url, token)
    profile = name or state.profile
    written = save_login(config, url, token, profile)
    click.echo(f"logged in to {url} as {email}; wrote {written} in {config}")
    if profile:
        click.echo(f"use it with: qcompute --profile {profile} ... or QCOMPUTE_PROFILE={profile}")
