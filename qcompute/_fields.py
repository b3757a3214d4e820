"""Typed field descriptors and the change tracking behind ``update()`` and ``commit()``.

A resource class declares its fields::

    class Task(Resource):
        name = Field("name")
        state = Field("state", read_only=True, volatile=True, parse=parse_enum(TaskState))
        constants = Field("constants", parse=..., dump=..., default=dict)

Per-object state (all in :class:`FieldHolder`):

* ``_data``: the wire document: the last server document with local edits written over it;
* ``_cache``: parsed Python values handed out, so ``task.constants["X"] = "1"`` mutates the same
  dict the next read returns;
* ``_dirty``: names of fields assigned since the last load or commit;
* ``_snapshot``: the wire form of each writable value when it was first handed out, so
  ``commit()`` also finds in-place mutations (changed = dirty ∪ {dump(value) != snapshot});
* ``_fetched_at``: ``time.monotonic()`` of the last load, ``None`` if never loaded;
* ``_partial``: the document is a summary; reading a field it lacks loads the whole object.

Reading a ``volatile`` field first calls the owner's ``_auto_refresh()`` (a GET only when the
data is older than ``update_cache_time`` and ``auto_update`` is on). A refresh never drops local
edits: changed fields keep their local values and stay changed. Reading a field never sends a
write and never creates anything.
"""
from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, ClassVar, Generic, Optional, TypeVar, Union, overload

from .exceptions import ReadOnlyFieldError

__all__ = [
    "Field",
    "FieldHolder",
    "parse_datetime",
    "dump_datetime",
    "parse_enum",
]

T = TypeVar("T")
E = TypeVar("E", bound=Enum)
_MISSING: Any = object()

_ISO = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$"
)


def parse_datetime(text: Union[str, datetime]) -> datetime:
    """Parse the dialect's dates (``2026-11-21T10:00:00.123456Z``) into an aware UTC datetime.

    Any number of fraction digits is accepted (more than 6 are truncated); no zone means UTC.
    """
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=timezone.utc)
    match = _ISO.match(text.strip())
    if not match:
        raise ValueError(f"not an ISO 8601 date: {text!r}")
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    zone = "+00:00" if zone in (None, "Z") else zone
    if len(zone) == 5:  # +hhmm
        zone = zone[:3] + ":" + zone[3:]
    parsed = datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
    return parsed.astimezone(timezone.utc)


def dump_datetime(value: datetime) -> str:
    """Format a datetime as the dialect does: UTC, 6 fraction digits, ``Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_enum(kind: type[E]) -> Callable[[Any], Union[E, str]]:
    """A parser giving the enum member, or the raw string for a value this SDK does not know."""

    def parse(raw: Any) -> Union[E, str]:
        try:
            return kind(raw)
        except ValueError:
            return str(raw)

    return parse


class Field(Generic[T]):
    """A typed attribute backed by one key of the wire document.

    Args:
        wire_name: the JSON key.
        read_only: set by the server only; assigning raises :class:`ReadOnlyFieldError`.
        volatile: changes on the server by itself (state, progress ...): reading it refreshes
            the object when its data is older than ``update_cache_time``.
        fixed_after_submit: writable until the object is submitted, then read-only.
        parse: wire value → Python value (not called for a missing or null value).
        dump: Python value → wire value (not called for ``None``).
        default: the value of a missing or null key; a callable (``dict``, ``list``) is called
            to make a fresh value.
        validate: ``validate(owner, value) -> value``, called on assignment; raise
            :class:`~qcompute.exceptions.FieldError` or ``TypeError``/``ValueError`` to refuse.
        doc: what the field holds. ``help()`` shows it on the owner class, followed by the
            field's mutability and wire key.
    """

    name: str

    def __init__(
        self,
        wire_name: str,
        *,
        read_only: bool = False,
        volatile: bool = False,
        fixed_after_submit: bool = False,
        parse: Optional[Callable[[Any], T]] = None,
        dump: Optional[Callable[[T], Any]] = None,
        default: Any = None,
        validate: Optional[Callable[[Any, Any], Any]] = None,
        doc: str = "",
    ) -> None:
        self.wire_name = wire_name
        self.read_only = read_only or volatile
        self.volatile = volatile
        self.fixed_after_submit = fixed_after_submit
        self.parse = parse
        self.dump = dump
        self.default = default
        self.validate = validate
        self.doc = doc
        self.__doc__ = self._describe()

    def _describe(self) -> str:
        """The text pydoc shows for the field (an instance ``__doc__``: what it holds, then
        whether it can be set and its wire key)."""
        if self.volatile:
            access = "read-only, refreshed from the server when stale"
        elif self.read_only:
            access = "read-only"
        elif self.fixed_after_submit:
            access = "writable until submitted"
        else:
            access = "writable"
        facts = f"({access}; wire key ``{self.wire_name}``)"
        return f"{self.doc}\n{facts}" if self.doc else facts

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    # -- conversions (override in subclasses that need the owner, e.g. to bind a connection)
    def from_wire(self, owner: Any, raw: Any) -> Any:
        if raw is _MISSING or raw is None:
            return self.default() if callable(self.default) else self.default
        if self.parse:
            return self.parse(raw)
        # a private copy: in-place edits must not reach the server document (or the caller's)
        return copy.deepcopy(raw) if isinstance(raw, (dict, list)) else raw

    def to_wire(self, owner: Any, value: Any) -> Any:
        if value is None:
            return None
        return self.dump(value) if self.dump else value

    # -- descriptor protocol
    @overload
    def __get__(self, obj: None, objtype: Optional[type] = None) -> "Field[T]": ...

    @overload
    def __get__(self, obj: object, objtype: Optional[type] = None) -> T: ...

    def __get__(self, obj: Any, objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if self.volatile:
            obj._auto_refresh()
        try:
            return obj._cache[self.name]
        except KeyError:
            pass
        raw = obj._data.get(self.wire_name, _MISSING)
        if raw is _MISSING and obj._partial:
            obj._complete()
            raw = obj._data.get(self.wire_name, _MISSING)
        value = self.from_wire(obj, raw)
        obj._cache[self.name] = value
        if not self.read_only and self.name not in obj._snapshot:
            obj._snapshot[self.name] = copy.deepcopy(self.to_wire(obj, value))
        return value

    def check_writable(self, obj: Any) -> None:
        """Raise :class:`ReadOnlyFieldError` if ``obj`` may not change this field now."""
        kind = type(obj).__name__
        if self.read_only:
            raise ReadOnlyFieldError(f"{kind}.{self.name} is read-only")
        if self.fixed_after_submit and obj._is_submitted():
            raise ReadOnlyFieldError(
                f"{kind}.{self.name} cannot change once the {kind.lower()} is submitted"
            )

    def __set__(self, obj: Any, value: Any) -> None:
        self.check_writable(obj)
        if self.validate is not None:
            value = self.validate(obj, value)
        obj._cache[self.name] = value
        obj._data[self.wire_name] = self.to_wire(obj, value)
        obj._dirty.add(self.name)


class FieldHolder:
    """Per-object state and change tracking for classes that declare :class:`Field` attributes.

    Subclasses provide ``_is_submitted()``, ``_auto_refresh()`` and ``_complete()``.
    """

    __slots__ = ("_data", "_cache", "_dirty", "_snapshot", "_fetched_at", "_partial")
    _declared: ClassVar[dict[str, Field[Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field[Any]] = {}
        for klass in reversed(cls.__mro__):
            fields.update({k: v for k, v in vars(klass).items() if isinstance(v, Field)})
        cls._declared = fields

    def _init_fields(self, data: Optional[dict[str, Any]] = None) -> None:
        self._data: dict[str, Any] = dict(data or {})
        self._cache: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._snapshot: dict[str, Any] = {}
        self._fetched_at: Optional[float] = None
        self._partial = False

    def _is_submitted(self) -> bool:
        raise NotImplementedError

    def _auto_refresh(self) -> None:
        raise NotImplementedError

    def _complete(self) -> None:
        raise NotImplementedError

    def _changed_fields(self) -> set[str]:
        """Fields assigned, or mutated in place, since the last load or commit."""
        changed = set(self._dirty)
        for name, value in self._cache.items():
            field = self._declared[name]
            if field.read_only or name in changed or name not in self._snapshot:
                continue
            if field.to_wire(self, value) != self._snapshot[name]:
                changed.add(name)
        return changed

    def _document(self) -> dict[str, Any]:
        """The wire document: ``_data`` with every changed value dumped over it.

        Unchanged fields keep the server's exact wire form (a parse/dump round trip may
        normalise it, e.g. ``"00:00:00"`` → ``"0.00:00:00"``, which a server could take for an
        edit of a fixed field)."""
        doc = dict(self._data)
        for name in self._changed_fields():
            field = self._declared[name]
            doc[field.wire_name] = field.to_wire(self, self._cache[name])
        return doc

    def _load(self, doc: dict[str, Any], *, partial: bool = False, now: Optional[float] = None,
              keep_changes: bool = True) -> None:
        """Take a server document; changed fields keep their local values (and stay changed)."""
        # A changed field is always in _cache: assignments and handed-out values both go there.
        kept = {name: self._cache[name] for name in self._changed_fields()} if keep_changes else {}
        self._data = dict(doc)
        self._cache = {}
        self._snapshot = {}
        self._dirty = set(kept)
        for name, value in kept.items():
            field = self._declared[name]
            self._cache[name] = value
            self._data[field.wire_name] = field.to_wire(self, value)
        self._partial = partial
        self._fetched_at = now

    def _mark_committed(self, doc: dict[str, Any]) -> None:
        """The server now holds ``doc``: nothing is changed any more."""
        self._data = dict(doc)
        self._dirty = set()
        self._snapshot = {
            name: copy.deepcopy(self._declared[name].to_wire(self, value))
            for name, value in self._cache.items()
            if not self._declared[name].read_only
        }
