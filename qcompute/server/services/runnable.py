"""What an instance can execute, checked at submit so that nothing that can never run is stored.

Constants become environment variables and the command becomes the process's arguments
(``command.py``). The kernel refuses any single string of ``ARG_STRLEN`` (128 KiB) or more,
and arguments plus environment past ``ARG_MAX``. This server's settings bound them further:
``max_constants`` and ``max_constant_bytes`` per document, and ``max_environment_bytes`` for
everything an instance receives from its task (constants, instance variables, command line),
which leaves room under ``ARG_MAX`` for what the runner adds at dispatch (paths, secrets).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from ..command import INSTANCE_VARIABLES, CommandError, split_command
from ..errors import BadRequest
from ..schemas.tasks import ARG_STRLEN, Constant
from ..settings import ServerSettings

__all__ = ["check_constants", "check_command_line", "instance_variables"]


def _bytes(text: str) -> int:
    return len(text.encode())


def check_constants(constants: Optional[Sequence[Constant]], settings: ServerSettings) -> None:
    """The document's own constants against ``max_constants`` and ``max_constant_bytes``."""
    constants = constants or ()
    if len(constants) > settings.max_constants:
        raise BadRequest(f"constants: {len(constants)} given; this server takes at most "
                         f"{settings.max_constants} (max_constants)", code="too_many_constants")
    for n, constant in enumerate(constants):
        size = _bytes(constant.key) + 1 + _bytes(constant.value or "")
        if size > settings.max_constant_bytes:
            raise BadRequest(f"constants[{n}] ({constant.key}): key=value is {size} bytes; this "
                             f"server takes at most {settings.max_constant_bytes} "
                             "(max_constant_bytes): pass large data as a resource file",
                             code="constant_too_large")


def instance_variables(*, name: str, count: int, last_id: int) -> dict[str, str]:
    """The variables the runner sets, at their widest for a task of ``count`` instances."""
    return {**INSTANCE_VARIABLES, "INSTANCE_ID": str(last_id), "FRAME_ID": str(last_id),
            "INSTANCE_COUNT": str(count), "QRANK": str(max(count - 1, 0)), "QSIZE": str(count),
            "TASK_UUID": "0" * 36, "TASK_NAME": name}


def check_command_line(field: str, command: str, environment: Mapping[str, str],
                       settings: ServerSettings) -> list[str]:
    """Split ``command`` as an instance would run it with ``environment`` (its constants and
    instance variables), and check that words and environment fit a process. ``field`` names
    the command in messages. Returns the words."""
    try:
        words = split_command(command, environment)
    except CommandError as exc:
        raise BadRequest(f"{field}: {exc}", code="invalid_command") from None
    for n, word in enumerate(words):
        if _bytes(word) >= ARG_STRLEN:
            raise BadRequest(f"{field}: word {n} is {_bytes(word)} bytes after ${{NAME}} "
                             f"expansion; no process takes an argument of {ARG_STRLEN} bytes "
                             "or more", code="command_too_large")
    total = sum(_bytes(k) + _bytes(v) + 2 for k, v in environment.items()) \
        + sum(_bytes(w) + 1 for w in words)
    if total > settings.max_environment_bytes:
        raise BadRequest(f"constants and {field}: an instance would receive {total} bytes of "
                         f"environment and arguments; this server takes at most "
                         f"{settings.max_environment_bytes} (max_environment_bytes)",
                         code="environment_too_large")
    return words
