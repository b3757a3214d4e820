"""Hardware constraints (``hardwareConstraints`` of tasks and pools) against the cluster's nodes.

A constraint is ``{"discriminator": <kind>, <field>: <value>}``; a set of constraints is
satisfiable when at least one node kind satisfies all of them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

from ..errors import BadRequest
from ..hardware import NodeCapabilities
from ..schemas.common import MAX_COUNT

__all__ = ["check_constraints", "unmet_constraints", "offered_constraints", "search_cpu_models"]

Node = NodeCapabilities


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise ValueError(f"a whole number from 1 to {MAX_COUNT}")
    return value


def _megabytes(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= 1e12:  # NaN compares False
        raise ValueError("a number of megabytes, from 0 to 1e12")
    return value


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value <= 1e6:
        raise ValueError("a number of GB per core, from 0 to 1e6")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value.strip()


def _specific(node: Node, key: str) -> bool:
    key = key.lower()
    return key == node.spec_key or key in (label.lower() for label in node.labels)


# discriminator -> (its field, the field's parser, does a node satisfy it)
_RULES: dict[str, tuple[Optional[str], Optional[Callable[[Any], Any]],
                        Callable[[Node, Any], bool]]] = {
    "MinimumCoreHardwareConstraint": ("coreCount", _count, lambda n, v: n.cores >= v),
    "MaximumCoreHardwareConstraint": ("coreCount", _count, lambda n, v: n.cores <= v),
    "MinimumRamCoreRatioHardwareConstraint": (
        "minimumMemoryGBCoreRatio", _ratio, lambda n, v: n.memory_gb_per_core >= v),
    "MaximumRamCoreRatioHardwareConstraint": (
        "maximumMemoryGBCoreRatio", _ratio, lambda n, v: n.memory_gb_per_core <= v),
    "MinimumRamHardwareConstraint": ("minimumMemoryMB", _megabytes,
                                     lambda n, v: n.memory_mb >= v),
    "MaximumRamHardwareConstraint": ("maximumMemoryMB", _megabytes,
                                     lambda n, v: n.memory_mb <= v),
    "SpecificHardwareConstraint": ("specificationKey", _text, _specific),
    "CpuModelHardwareConstraint": ("cpuModel", _text,
                                   lambda n, v: v.lower() in n.cpu_model.lower()),
    "GpuHardwareConstraint": (None, None, lambda n, _: n.gpu),
    "NoGpuHardwareConstraint": (None, None, lambda n, _: not n.gpu),
    "SSDHardwareConstraint": (None, None, lambda n, _: n.ssd),
    "NoSSDHardwareConstraint": (None, None, lambda n, _: not n.ssd),
}


def _parse(constraint: Any) -> tuple[str, Any, Callable[[Node, Any], bool]]:
    """``(label for messages, parsed value, check)``, or a 400 naming what is wrong."""
    if not isinstance(constraint, dict) or not isinstance(constraint.get("discriminator"), str):
        raise BadRequest(f"a hardware constraint must be an object with a discriminator, "
                         f"got {constraint!r}", code="invalid_hardware_constraint")
    kind = constraint["discriminator"]
    if kind not in _RULES:
        raise BadRequest(f"unknown hardware constraint {kind!r}; known: {', '.join(_RULES)}",
                         code="invalid_hardware_constraint")
    field, parser, check = _RULES[kind]
    if field is None or parser is None:
        return kind, None, check
    try:
        value = parser(constraint.get(field))
    except ValueError as exc:
        raise BadRequest(f"hardware constraint {kind}: {field} must be {exc}, "
                         f"got {constraint.get(field)!r}",
                         code="invalid_hardware_constraint") from None
    return f"{kind}({field}={value!r})", value, check


def unmet_constraints(capabilities_list: Iterable[Node],
                      constraints: Optional[list[dict[str, Any]]]) -> Optional[str]:
    """Why no node kind satisfies every constraint (which ones, and what the cluster offers),
    or ``None`` when one does. Checked at submit, by the scheduler before it dispatches, and by
    ``GET /tasks/{uuid}/explain``.

    Raises:
        BadRequest: ``invalid_hardware_constraint`` for a malformed or unknown constraint.
    """
    if constraints is None:
        return None
    if not isinstance(constraints, list):
        raise BadRequest("hardwareConstraints must be a list of hardware constraints",
                         code="invalid_hardware_constraint")
    parsed = [_parse(c) for c in constraints]
    nodes = list(capabilities_list)
    if not parsed or any(all(check(n, v) for _, v, check in parsed) for n in nodes):
        return None
    unmet = [label for label, v, check in parsed if not any(check(n, v) for n in nodes)]
    what = (f"the hardware constraint {', '.join(unmet)}" if unmet else
            f"the hardware constraints {', '.join(label for label, _, _ in parsed)} together")
    offers = "; ".join(n.describe() for n in nodes) or "no nodes"
    return f"no node of this cluster satisfies {what}; it offers: {offers}"


def check_constraints(capabilities_list: Iterable[Node],
                      constraints: Optional[list[dict[str, Any]]]) -> None:
    """Raise :class:`BadRequest` unless one node kind satisfies every constraint.

    Raises:
        BadRequest: ``invalid_hardware_constraint`` for a malformed or unknown constraint,
            ``unsatisfiable_hardware_constraint`` when no node satisfies them all.
    """
    unmet = unmet_constraints(capabilities_list, constraints)
    if unmet:
        raise BadRequest(unmet, code="unsatisfiable_hardware_constraint")


def _constraint(kind: str, **fields: Any) -> dict[str, Any]:
    return {"discriminator": kind, **fields}


def offered_constraints(nodes: Iterable[Node]) -> list[dict[str, Any]]:
    """The constraints this cluster can satisfy, node kind by node kind, without duplicates."""
    found: dict[str, dict[str, Any]] = {}
    for node in nodes:
        ratio = math.floor(node.memory_gb_per_core * 100) / 100  # rounded down: still met
        items = [
            _constraint("SpecificHardwareConstraint", specificationKey=node.spec_key),
            *(_constraint("SpecificHardwareConstraint", specificationKey=label)
              for label in node.labels),
            _constraint("CpuModelHardwareConstraint", cpuModel=node.cpu_model),
            _constraint("MinimumCoreHardwareConstraint", coreCount=node.cores),
            _constraint("MinimumRamHardwareConstraint", minimumMemoryMB=node.memory_mb),
            _constraint("MinimumRamCoreRatioHardwareConstraint", minimumMemoryGBCoreRatio=ratio),
            _constraint("GpuHardwareConstraint" if node.gpu else "NoGpuHardwareConstraint"),
            _constraint("SSDHardwareConstraint" if node.ssd else "NoSSDHardwareConstraint"),
        ]
        for item in items:
            found.setdefault(repr(sorted(item.items())), item)
    return list(found.values())


def search_cpu_models(nodes: Iterable[Node], query: str) -> list[dict[str, Any]]:
    """CpuModelHardwareConstraints matching ``query``: exact, then prefix, then substring."""
    wanted = query.strip().lower()
    ranked: dict[str, int] = {}
    for model in dict.fromkeys(n.cpu_model for n in nodes):
        low = model.lower()
        rank = 0 if low == wanted else 1 if low.startswith(wanted) else \
            2 if wanted in low else None
        if rank is not None:
            ranked[model] = rank
    ordered = sorted(ranked, key=lambda m: (ranked[m], m.lower()))
    return [_constraint("CpuModelHardwareConstraint", cpuModel=m) for m in ordered]
