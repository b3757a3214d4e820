"""A task's command as a Qarnot node runs it: ``${NAME}`` filled in, then split into words as a
shell would, then executed directly: no shell (users who want one write ``sh -c '…'``). Shared
by the server (``qcompute.server.command``) and the SDK's batch-file checks.

``${NAME}`` takes the value of the constant or instance variable NAME (``INSTANCE_ID``,
``FRAME_ID``, ``INSTANCE_COUNT``, ``QRANK``, ``QSIZE``, ``TASK_PATH``…); an unknown name stays
as written, as on Qarnot. Granted secrets and exported credentials are in the environment only,
never filled into the command. ``$NAME`` without braces is left alone (no shell expands it).
"""
from __future__ import annotations

import re
import shlex
from typing import Mapping

__all__ = ["CommandError", "expand", "split_command", "check_command", "INSTANCE_VARIABLES"]

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Placeholders for checking a command at submit, before any instance exists.
INSTANCE_VARIABLES = {"INSTANCE_ID": "0", "FRAME_ID": "0", "INSTANCE_COUNT": "1", "QRANK": "0",
                      "QSIZE": "1", "TASK_UUID": "", "TASK_NAME": "", "TASK_PATH": "/job",
                      "TMP_PATH": "/tmp", "TMP_RAMFS_PATH": "/ramfs"}


class CommandError(ValueError):
    """The command cannot be split into words (unbalanced quotes, a trailing backslash)."""


def expand(command: str, variables: Mapping[str, str]) -> str:
    """Fill in ``${NAME}`` from ``variables``; unknown names stay as written."""
    return _REFERENCE.sub(lambda m: variables.get(m.group(1), m.group(0)), command)


def split_command(command: str, variables: Mapping[str, str]) -> list[str]:
    """The words to execute (``[]`` for an empty command)."""
    expanded = expand(command, variables)
    try:
        return shlex.split(expanded)
    except ValueError as exc:
        raise CommandError(f"the command cannot be split into words ({exc}): {expanded!r}; "
                           "check its quotes, or wrap it in sh -c '…'") from None


def check_command(command: str, constants: Mapping[str, str]) -> None:
    """Raise CommandError if the command would not split for an instance of this task."""
    split_command(command, {**constants, **INSTANCE_VARIABLES})
