"""Where a key path of a TOML document is written: ``("tasks", 2, "depends_on")`` → its line.

``tomllib`` keeps no positions, so the text is scanned once: table headers (``[pool]``,
``[[tasks]]``, ``[tasks.retries]``) and ``key = value`` lines give the line of each path. A
path not written on a line of its own (a value inside an inline table or a list) gets the line
of its nearest written parent.
"""
from __future__ import annotations

import re
from typing import Optional, Union

__all__ = ["Locator", "format_path"]

Path = tuple[Union[str, int], ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")  # a bare or quoted key
_KEY = re.compile(rf"^\s*((?:{_PART.pattern})(?:\s*\.\s*(?:{_PART.pattern}))*)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip("\"'") for p in _PART.findall(dotted)]


def format_path(path: Path) -> str:
    """``("tasks", 2, "depends_on")`` → ``tasks[2].depends_on``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class Locator:
    """The lines of a TOML text's tables and keys (1-based)."""

    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        counts: dict[Path, int] = {}  # array-of-tables path -> entries seen
        table: Path = ()
        in_string: Optional[str] = None
        for number, line in enumerate(text.splitlines(), 1):
            if in_string:  # inside a multi-line string: only its end matters
                if line.count(in_string) % 2:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header:
                table = self._resolve(_parts(header.group(2)), counts)
                if header.group(1) == "[[":
                    counts[table] = counts.get(table, 0) + 1
                    table = table + (counts[table] - 1,)
                self.lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                self.lines.setdefault(table + tuple(_parts(key.group(1))), number)
                rest = line[key.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2:
                        in_string = quote

    @staticmethod
    def _resolve(parts: list[str], counts: dict[Path, int]) -> Path:
        """A header's path, with the current index of each array of tables it goes through."""
        path: Path = ()
        for number, part in enumerate(parts, 1):
            path = path + (part,)
            if number < len(parts) and path in counts:
                path = path + (counts[path] - 1,)
        return path

    def line(self, path: Path) -> Optional[int]:
        """The line of ``path``, or of its nearest parent written in the text."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None
