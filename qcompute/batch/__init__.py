"""Batch files: one TOML file describes a job (its tasks, their dependencies by name, the local
directories they read, where their results go) so that it runs without writing Python::

    batch = qcompute.load_batch("pipeline.toml")     # parsed and checked offline
    run = conn.submit_file("pipeline.toml")           # checked against the cluster, submitted
    run.wait(); run.download_results()

See ``docs/batch.rst`` for the format; :func:`~qcompute.batch.models.schema` is its JSON Schema.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from pydantic import ValidationError

from ..exceptions import BatchError
from .checks import Problem, cluster_problems, local_problems
from .locate import Locator
from .models import DEPENDS_ON_TAGS, Batch, schema
from .submit import BatchRun, submit_batch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from ..connection import Connection

__all__ = ["Batch", "BatchRun", "BatchError", "Problem", "load_batch", "check_file", "schema"]

PathLike = Union[str, "os.PathLike[str]"]
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


def _parse(path: Path) -> tuple[Optional[Batch], list[Problem]]:
    """The batch (None when the file's structure is wrong) and the problems found offline, each
    with its line when the text shows it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem((), f"cannot read the file: {exc}")]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _TOML_LINE.search(str(exc))
        return None, [Problem((), f"not valid TOML: {exc}", int(line.group(1)) if line else None)]
    try:
        batch = Batch.model_validate(doc)
    except ValidationError as exc:
        problems = [_pydantic_problem(err) for err in exc.errors()]
        batch = None
    else:
        batch._source = path
        problems = local_problems(batch, path.parent)
    locator = Locator(text)
    return batch, _in_file_order([Problem(p.path, p.message, p.line or locator.line(p.path))
                                  for p in problems])


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    """Top to bottom, as a compiler lists them (those without a line first)."""
    return sorted(problems, key=lambda p: p.line or 0)


def _pydantic_problem(err: Any) -> Problem:
    raw = err["loc"]  # without the form's tag: depends_on[1].table.when -> depends_on[1].when
    loc = tuple(part for i, part in enumerate(raw)
                if not (i >= 2 and part in DEPENDS_ON_TAGS and raw[i - 2] == "depends_on"))
    if err["type"] == "extra_forbidden":
        return Problem(loc, "unknown key (a typo?); see the schema: qcompute validate --schema")
    message = err["msg"]
    if err["type"] == "missing":
        message = "required, missing"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return Problem(loc, message)


def load_batch(path: PathLike) -> Batch:
    """Read and check a batch file offline (structure, names, dependencies, local paths,
    commands, bucket names).

    Raises:
        BatchError: the file has problems; ``problems`` lists every one, with its line or key
            path.
    """
    batch, problems = _parse(Path(path))
    if problems or batch is None:
        raise BatchError(path, problems)
    return batch


def check_file(path: PathLike, conn: Optional["Connection"] = None) -> tuple[Optional[Batch],
                                                                             list[Problem]]:
    """Every problem of a batch file: offline ones, then (with ``conn``, once the file's
    structure is valid) the cluster's. An unreachable cluster gives one problem saying so.

    Returns:
        ``(batch or None, problems)``.
    """
    batch, problems = _parse(Path(path))
    if batch is not None and conn is not None:
        locator = Locator(Path(path).read_text(encoding="utf-8"))
        problems = _in_file_order(problems + [
            Problem(p.path, p.message, locator.line(p.path) if p.path else None)
            for p in cluster_problems(batch, conn)])
    return batch, problems


def _submit_file(conn: "Connection", path: PathLike, *, progress: Any = True,
                 check: bool = True) -> BatchRun:
    """``Connection.submit_file``: check the file (offline and against the cluster), then
    submit it (see :func:`~qcompute.batch.submit.submit_batch`)."""
    batch, problems = check_file(path, conn if check else None)
    if problems or batch is None:
        raise BatchError(path, problems)
    return submit_batch(conn, batch, progress=progress)

