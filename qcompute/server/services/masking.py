"""Masking secret values in task output before anything is stored.

Every occurrence of a registered value in stdout/stderr becomes :data:`MASK` (``***``). Output
arrives in chunks, so a value may be split across two of them: a :class:`Masker` holds back the
end of a chunk while it could still be the start of a value, and releases it with the next chunk
or at :meth:`Masker.flush` (the instance finished). Only a tail shorter than the longest value is
ever held back.

Values shorter than :data:`MIN_LENGTH` characters are not masked: replacing every ``1`` or
``ab`` in the output would mangle it and would give the value away anyway.
"""
from __future__ import annotations

import re
import threading
from typing import Hashable, Iterable, Optional

__all__ = ["MASK", "MIN_LENGTH", "Masker", "OutputMasks"]

MASK = "***"
MIN_LENGTH = 4


def _failure(value: str) -> list[int]:
    """KMP failure table: ``f[i]`` is the longest proper border of ``value[:i + 1]``."""
    table, k = [0] * len(value), 0
    for i in range(1, len(value)):
        while k and value[i] != value[k]:
            k = table[k - 1]
        if value[i] == value[k]:
            k += 1
        table[i] = k
    return table


class Masker:
    """Masks values in one stream fed chunk by chunk."""

    def __init__(self, values: Iterable[str]) -> None:
        # Longest first: at one position the regex takes the longest value that matches.
        self._values = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len,
                              reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self._values))) \
            if self._values else None
        self._tables = [_failure(v) for v in self._values]
        self._tail = ""

    def __bool__(self) -> bool:
        return self._pattern is not None

    def _hold_from(self, data: str) -> int:
        """The first index from which ``data`` is a proper prefix of some value: the longest
        suffix of ``data`` that starts a value, found with KMP in O(len(value)) per value."""
        longest = 0
        for value, table in zip(self._values, self._tables):
            window = data[-(len(value) - 1):]  # shorter than the value: only proper prefixes
            if value[0] not in window:
                continue
            k = 0
            for ch in window:
                while k and ch != value[k]:
                    k = table[k - 1]
                if ch == value[k]:
                    k += 1
            longest = max(longest, k)
        return len(data) - longest

    def feed(self, text: str) -> str:
        """Mask a chunk; returns what may be stored now (possibly less than was fed)."""
        if self._pattern is None:
            return text
        data = self._tail + text
        hold = self._hold_from(data)
        out: list[str] = []
        pos = 0
        for match in self._pattern.finditer(data):
            if match.start() >= hold:
                break
            out += (data[pos:match.start()], MASK)
            pos = match.end()
        cut = max(hold, pos)
        out.append(data[pos:cut])
        self._tail = data[cut:]
        return "".join(out)

    def flush(self) -> str:
        """Mask and return what is held back (the stream ended)."""
        tail, self._tail = self._tail, ""
        return self._pattern.sub(MASK, tail) if self._pattern is not None and tail else tail


class OutputMasks:
    """The maskers of every running instance, one per stream; thread-safe.

    :meth:`register` when the instance's spec is built, :meth:`feed` each output chunk,
    :meth:`finish` when it ends. Instances never registered pass through unchanged.
    """

    def __init__(self) -> None:
        self._values: dict[Hashable, tuple[str, ...]] = {}
        self._maskers: dict[Hashable, dict[str, Masker]] = {}
        self._lock = threading.Lock()

    def register(self, key: Hashable, values: Iterable[str]) -> None:
        kept = tuple(v for v in values if len(v) >= MIN_LENGTH)
        with self._lock:
            self._maskers.pop(key, None)
            if kept:
                self._values[key] = kept
            else:
                self._values.pop(key, None)

    def _masker(self, key: Hashable, stream: str) -> Optional[Masker]:
        with self._lock:
            values = self._values.get(key)
            if values is None:
                return None
            streams = self._maskers.setdefault(key, {})
            if stream not in streams:
                streams[stream] = Masker(values)
            return streams[stream]

    def feed(self, key: Hashable, stream: str, text: str) -> str:
        masker = self._masker(key, stream)
        return text if masker is None else masker.feed(text)

    def finish(self, key: Hashable) -> dict[str, str]:
        """Forget the instance; returns the held-back text of each stream, masked."""
        with self._lock:
            self._values.pop(key, None)
            maskers = self._maskers.pop(key, {})
        return {stream: text for stream, m in maskers.items() if (text := m.flush())}

    def __len__(self) -> int:
        return len(self._values)
