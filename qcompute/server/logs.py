"""The server process's logging, set when the app starts (``configure``) and undone when it
stops.

* ``log_format`` (``QCOMPUTE_SERVER_LOG_FORMAT``): ``text`` (as configured by the command
  line, one line per record), or ``json``: one JSON object per line, with ``time``, ``level``,
  ``logger``, ``message`` and the record's own fields (the transition lines' ``event``,
  ``uuid``, ``state`` ..., transitions.py), on every handler of the root logger and of
  uvicorn's loggers.
* ``access_log`` (``QCOMPUTE_SERVER_ACCESS_LOG``): uvicorn's one line per request, kept apart
  from the story: ``file`` (``<data dir>/access.log``, rotated at 10 MiB, 3 kept), ``stdout``
  (uvicorn's own default: the story and the rest go to stderr), or ``off``.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
from typing import TYPE_CHECKING, Callable

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from .settings import ServerSettings

__all__ = ["configure", "json_formatter", "ACCESS_LOG_FILE"]

ACCESS_LOG_FILE = "access.log"
_ACCESS_BYTES, _ACCESS_KEPT = 10 * 1024 * 1024, 3


def json_formatter() -> logging.Formatter:
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level",
                                        "name": "logger"})


def configure(settings: "ServerSettings") -> Callable[[], None]:
    """Apply the settings to this process's loggers; returns what restores them."""
    undo: list[Callable[[], None]] = []
    root = logging.getLogger()
    if settings.log_format == "json" and not root.handlers:  # not run by the command line
        handler = logging.StreamHandler(sys.stderr)
        root.addHandler(handler)
        undo.append(lambda: root.removeHandler(handler))
    access = logging.getLogger("uvicorn.access")
    before = (list(access.handlers), access.propagate, access.disabled)
    undo.append(lambda: _restore(access, *before))
    if settings.access_log == "off":
        access.disabled = True
    elif settings.access_log == "file":
        access.handlers = [logging.handlers.RotatingFileHandler(
            settings.data_dir / ACCESS_LOG_FILE, maxBytes=_ACCESS_BYTES,
            backupCount=_ACCESS_KEPT, encoding="utf-8")]
        access.handlers[0].setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access.propagate = False
    if settings.log_format == "json":
        formatter = json_formatter()
        for logger in (root, logging.getLogger("uvicorn"), access):
            for handler in logger.handlers:
                previous = handler.formatter
                handler.setFormatter(formatter)
                undo.append(lambda h=handler, f=previous: h.setFormatter(f))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


def _restore(logger: logging.Logger, handlers: list, propagate: bool, disabled: bool) -> None:
    for handler in logger.handlers:
        if handler not in handlers:
            handler.close()
    logger.handlers, logger.propagate, logger.disabled = handlers, propagate, disabled
