"""Wire conversions and assignment checks shared by the Task, Pool and Job fields.

Pure functions (no HTTP): constants lists, .NET-style timespans (``"d.hh:mm:ss[.fffffff]"``),
bucket fields, and the ``validate(owner, value)`` callables the fields use on assignment.
"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Callable, Mapping, Optional, Union

from ._fields import Field
from .bucket import Bucket
from .exceptions import FieldError
from .hardware import HardwareConstraint

__all__ = [
    "parse_constants", "dump_constants", "parse_timespan", "dump_timespan", "timespan",
    "str_list", "str_dict", "optional_str", "optional_bool", "count", "optional_count",
    "instance_of", "nonempty_name", "uuid_of", "as_bucket", "bucket_list", "ResourcesField",
    "ResultsField", "value_field", "hardware_field",
]


# -- constants ---------------------------------------------------------------------------------
def parse_constants(raw: list[Mapping[str, Any]]) -> dict[str, Optional[str]]:
    return {c.get("key", c.get("name")): c.get("value") for c in raw}


def dump_constants(value: Mapping[str, Any]) -> list[dict[str, Optional[str]]]:
    return [{"key": str(k), "value": None if v is None else str(v)} for k, v in value.items()]


# -- timespans ---------------------------------------------------------------------------------
_TIMESPAN = re.compile(r"^(-)?(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?$")


def parse_timespan(text: Union[str, timedelta]) -> timedelta:
    """Parse a .NET TimeSpan text: ``"1.03:16:50.5000000"`` is 1 day 3:16:50.5.

    The fraction is in seconds (up to 7 digits, .NET ticks), not milliseconds.

    Raises:
        ValueError: not a ``[-][d.]hh:mm:ss[.fffffff]`` text.
    """
    if isinstance(text, timedelta):
        return text
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise ValueError(f"not a timespan 'd.hh:mm:ss': {text!r}")
    sign, days, hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
        raise ValueError(f"not a timespan 'd.hh:mm:ss' (hours < 24, minutes and seconds < 60): "
                         f"{text!r}")
    value = timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes),
                      seconds=int(seconds), microseconds=int((fraction or "0").ljust(7, "0")) / 10)
    return -value if sign else value


def dump_timespan(value: timedelta) -> str:
    """``timedelta(days=1, hours=2)`` → ``"1.02:00:00"`` (always with the day count; a fraction,
    if any, in 7 digits as .NET writes it)."""
    if value < timedelta(0):
        raise ValueError(f"a timespan must not be negative, got {value!r}")
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{value.days}.{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{text}.{value.microseconds * 10:07d}" if value.microseconds else text


def _lenient_timespan(raw: Any) -> Union[timedelta, str]:
    try:
        return parse_timespan(raw)
    except (ValueError, AttributeError):
        return str(raw)  # a form this SDK does not know: kept as sent


def timespan(wire_name: str, **options: Any) -> Field[Any]:
    """A field holding a duration: a ``timedelta`` in Python, ``"d.hh:mm:ss"`` on the wire.
    Assign a ``timedelta`` or a ``"d.hh:mm:ss"`` text."""

    def check(owner: Any, value: Any) -> Optional[timedelta]:
        if value is None or isinstance(value, timedelta):
            result = value
        elif isinstance(value, str):
            try:
                result = parse_timespan(value)
            except ValueError as exc:
                raise FieldError(str(exc)) from None
        else:
            raise FieldError(f"expected a timedelta or a 'd.hh:mm:ss' text, got {value!r}")
        if result is not None and result < timedelta(0):
            raise FieldError(f"a duration must not be negative, got {value!r}")
        return result

    def dump(value: Any) -> str:
        return dump_timespan(value) if isinstance(value, timedelta) else str(value)

    return Field(wire_name, parse=_lenient_timespan, dump=dump, validate=check, **options)


# -- assignment checks -------------------------------------------------------------------------
def str_list(owner: Any, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise FieldError(f"expected a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise FieldError(f"expected a list of strings, got {value!r}")
    return items


def str_dict(owner: Any, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(f"expected a dict, got {value!r}")
    return dict(value)


def optional_str(owner: Any, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise FieldError(f"expected a string or None, got {value!r}")
    return value


def optional_bool(owner: Any, value: Any) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise FieldError(f"expected True, False or None, got {value!r}")
    return value


def count(owner: Any, value: Any) -> int:
    """An int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(f"expected an int >= 0, got {value!r}")
    return value


def optional_count(owner: Any, value: Any) -> Optional[int]:
    """An int >= 0, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise FieldError(f"expected an int >= 0 or None, got {value!r}")
    return value


def instance_of(kind: type, *, optional: bool = True) -> Callable[[Any, Any], Any]:
    """A check accepting an instance of ``kind`` (or None when ``optional``)."""

    def check(owner: Any, value: Any) -> Any:
        if (value is None and optional) or isinstance(value, kind):
            return value
        raise FieldError(f"expected a {kind.__name__}, got {value!r}")

    return check


def value_field(kind: Any, wire_name: str, **options: Any) -> Field[Any]:
    """A field holding an option value (a class with ``to_json``/``from_json``); a fresh
    ``kind()`` when the document has none."""
    return Field(wire_name, parse=kind.from_json, dump=lambda v: v.to_json(),
                 validate=instance_of(kind), default=kind, **options)


def _hardware_list(owner: Any, value: Any) -> list[HardwareConstraint]:
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(c, HardwareConstraint) for c in items):
        raise FieldError(f"expected a list of hardware constraints, got {value!r}")
    return items


def hardware_field(wire_name: str, **options: Any) -> Field[list[HardwareConstraint]]:
    """``hardwareConstraints`` ↔ a list of :class:`~qcompute.hardware.HardwareConstraint`."""
    return Field(wire_name, default=list, validate=_hardware_list,
                 parse=lambda raw: [HardwareConstraint.from_json(d) for d in raw],
                 dump=lambda v: [c.to_json() for c in v], **options)


def nonempty_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FieldError(f"a name must be a non-empty string, got {value!r}")
    return value


def uuid_of(obj: Any, what: str) -> str:
    """The uuid of ``obj``: a uuid string itself, or an object with a ``uuid``."""
    uuid = obj if isinstance(obj, str) else getattr(obj, "uuid", None)
    if not isinstance(uuid, str) or not uuid:
        raise TypeError(f"{what} must be a uuid or a submitted object with a uuid, got {obj!r}")
    return uuid


# -- buckets -----------------------------------------------------------------------------------
def as_bucket(owner: Any, value: Union[Bucket, str]) -> Bucket:
    if isinstance(value, Bucket):
        return value
    if isinstance(value, str):
        return Bucket(owner._conn, value, create=False)
    raise FieldError(f"expected a Bucket or a bucket name, got {value!r}")


def bucket_list(owner: Any, value: Any) -> list[Bucket]:
    if isinstance(value, (str, bytes, Bucket)) or not hasattr(value, "__iter__"):
        raise FieldError(f"expected a list of buckets, got {value!r}")
    return [as_bucket(owner, item) for item in value]


class ResourcesField(Field[list[Bucket]]):
    """``advancedResourceBuckets`` ↔ a list of :class:`Bucket` bound to the owner's connection."""

    def from_wire(self, owner: Any, raw: Any) -> list[Bucket]:
        if raw is None or not isinstance(raw, list):
            return []
        return [Bucket.from_resource_json(owner._conn, doc) for doc in raw]

    def to_wire(self, owner: Any, value: Any) -> Any:
        return [bucket.to_resource_json() for bucket in value or ()]


class ResultsField(Field[Optional[Bucket]]):
    """``resultBucket`` (a name) ↔ a :class:`Bucket` or None. Never sends CreateBucket."""

    def from_wire(self, owner: Any, raw: Any) -> Optional[Bucket]:
        return Bucket(owner._conn, raw, create=False) if isinstance(raw, str) and raw else None

    def to_wire(self, owner: Any, value: Any) -> Any:
        return value.name if value is not None else None
