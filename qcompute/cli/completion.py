"""``qcompute completion bash|zsh|fish``: print click's completion script for a shell."""
from __future__ import annotations

import click
from click.shell_completion import get_completion_class

PROG = "qcompute"
COMPLETE_VAR = "_QCOMPUTE_COMPLETE"


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script of qcompute for SHELL.

    \b
    bash: eval "$(qcompute completion bash)"            in ~/.bashrc
    zsh:  eval "$(qcompute completion zsh)"             in ~/.zshrc
    fish: qcompute completion fish > ~/.config/fish/completions/qcompute.fish

    Task, pool and job uuids and bucket names complete from the cluster of the current
    profile (quietly nothing when it cannot be reached)."""
    from . import main

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice lists only shells click supports
    click.echo(cls(main, {}, PROG, COMPLETE_VAR).source())
