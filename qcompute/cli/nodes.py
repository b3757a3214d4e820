"""``qcompute node join``: add this machine to the Ray cluster of a ``--executor ray`` server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import click


@click.group()
def node() -> None:
    """Machines of a Ray cluster (a server started with ``qcompute up --executor ray``)."""


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise click.BadParameter(f"{value!r} is not {what}", param_hint=f"--{what.split()[0]}")
        pairs[key] = rest
    return pairs


@node.command()
@click.argument("address", metavar="HOST:PORT")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="A copy of the head's Ray token (<data dir>/ray-token).")
@click.option("--cpus", type=click.FloatRange(min=0), help="CPUs offered [all].")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A node label; tasks select it with SpecificHardwareConstraint KEY=VALUE.")
@click.option("--resource", "resources", multiple=True, metavar="NAME=AMOUNT",
              help="A custom resource (a licence, a device); a SpecificHardwareConstraint NAME "
                   "sends instances here.")
@click.option("--node-ip-address", metavar="IP", help="The address other nodes reach this one at.")
@click.option("--dry-run", is_flag=True, help="Print the ray start command instead of running it.")
def join(address: str, token_file: Path, cpus: Optional[float], labels: tuple[str, ...],
         resources: tuple[str, ...], node_ip_address: Optional[str], dry_run: bool) -> None:
    """Join the Ray cluster at HOST:PORT: ``ray start --address HOST:PORT`` with token
    authentication, this machine's CPU model and disk kind as labels, and yours.

    The node runs until ``ray stop`` on this machine (which stops every Ray process here).
    """
    try:
        from qcompute.server.executors.ray_executor import node_labels
        from qcompute.server.hardware import detect
    except ImportError as exc:
        raise click.ClickException(f"a node needs the [server,ray] extras: pip install "
                                   f"'qcompute[server,ray]' ({exc})") from None
    ray = shutil.which("ray")
    if ray is None:
        raise click.ClickException("the ray command is not installed: pip install "
                                   "'qcompute[server,ray]'")
    amounts = {}
    for name, amount in _pairs(resources, "resource NAME=AMOUNT").items():
        try:
            amounts[name] = float(amount)
        except ValueError:
            raise click.BadParameter(f"{amount!r} is not a number",
                                     param_hint="--resource") from None
    found = {**node_labels(detect(Path.cwd())), **_pairs(labels, "label KEY=VALUE")}
    command = [ray, "start", "--address", address, "--disable-usage-stats",
               "--labels", ",".join(f"{k}={v}" for k, v in found.items())]
    if amounts:
        command += ["--resources", json.dumps(amounts)]
    if cpus is not None:
        command += ["--num-cpus", f"{cpus:g}"]
    if node_ip_address:
        command += ["--node-ip-address", node_ip_address]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    if dry_run:
        click.echo(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token_file} "
                   + " ".join(f"'{c}'" if any(x in c for x in " {,") else c for c in command))
        return
    raise SystemExit(subprocess.run(command, env=env).returncode)
