"""The ``qcompute`` command: the embedded cluster (up, down, status, logs, server, node join),
users, login, batch files (validate, submit) and a command group for every object (task, bucket,
pool, job)."""
from __future__ import annotations

import logging

import click

from qcompute._version import __version__

from ._common import Group, State
from .batch import submit, validate
from .buckets import bucket
from .cluster import down, logs, server, status, up
from .completion import completion
from .jobs import job
from .login import login
from .nodes import node
from .pools import pool
from .tasks import task
from .users import user


@click.group(cls=Group)
@click.version_option(__version__, prog_name="qcompute")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.option("--profile", envvar="QCOMPUTE_PROFILE", metavar="NAME",
              help="The [profile NAME] section of the client config to use [$QCOMPUTE_PROFILE].")
@click.pass_context
def main(ctx: click.Context, verbose: bool, profile: str) -> None:
    """qcompute: a Qarnot-dialect compute cluster and its SDK."""
    ctx.obj = State(profile)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # the SDK logs each retry at INFO already; urllib3 would say it again
        logging.getLogger("urllib3").setLevel(logging.ERROR)


for command in (up, down, status, logs, server, node, user, login, validate, submit, task, bucket,
                pool, job, completion):
    main.add_command(command)
