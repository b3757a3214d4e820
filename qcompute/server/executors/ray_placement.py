"""The RayExecutor's placement groups (a pool's slots) and what a waiting instance is asked
against (``executors/ray_executor.py``)."""
from __future__ import annotations

import logging
from typing import Any

from ray.util import placement_group, placement_group_table, remove_placement_group

from .base import InstanceKey

__all__ = ["PoolGroup", "remove_group", "on_nodes", "selects"]

log = logging.getLogger(__name__)


class PoolGroup:
    """One placement group of a pool: the slots it took in one round, one bundle each."""

    def __init__(self, pool_uuid: str, slots: frozenset[int], bundle: dict[str, float],
                 selector: dict[str, str]) -> None:
        self.slots, self.released = slots, set()  # released: given back, still reserved
        self.retired = False  # all its slots were given back: removed once nothing runs in it
        self.runs: set[InstanceKey] = set()
        self.selector = selector
        self.pg = placement_group([bundle] * len(slots), strategy="PACK",
                                  name=f"qcompute-pool-{pool_uuid}",
                                  bundle_label_selector=[selector] * len(slots) if selector
                                  else None)

    @property
    def free(self) -> int:
        return len(self.slots) - len(self.released) - len(self.runs)

    def state(self) -> dict[str, Any]:
        """Ray's view of the group: ``id``, ``state`` (PENDING until placed, CREATED) and
        ``schedulingState`` (why a pending group waits: NO_RESOURCES, INFEASIBLE, ...)."""
        info = placement_group_table(self.pg) or {}
        return {"id": self.pg.id.hex(), "bundles": len(self.slots),
                "labelSelector": self.selector,
                "state": info.get("state", "UNKNOWN"),
                "schedulingState": (info.get("stats") or {}).get("scheduling_state")}


def remove_group(group: PoolGroup) -> None:
    try:
        remove_placement_group(group.pg)
    except Exception as exc:
        log.warning("cannot remove placement group %s: %s", group.pg.id.hex(), exc)


def on_nodes(selector: dict[str, str]) -> str:
    return " on a node with " + ", ".join(f"{k}={v}" for k, v in selector.items()) \
        if selector else ""


def selects(node: dict[str, Any], selector: dict[str, str], asks: dict[str, float]) -> bool:
    """Whether a node (as ``describe_nodes`` lists it) has the labels and custom resources an
    instance asks for."""
    for name, value in selector.items():
        if name == "ray.io/node-id":
            if node["id"] not in value.removeprefix("in(").removesuffix(")").split(","):
                return False
        elif node["labels"].get(name) != value:
            return False
    return all(name in node["resources"] for name in asks if name != "CPU")
