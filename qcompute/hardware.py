"""Hardware constraints: what a node must have to run a task or a pool (``hardwareConstraints``).

One small class per ``discriminator`` of the dialect; :func:`HardwareConstraint.from_json`
picks the class. A discriminator this SDK does not know gives an
:class:`UnknownHardwareConstraint` that keeps the raw document and sends it back unchanged::

    task.hardware_constraints = [MinimumCoreHardware(8), NoGpuHardware()]
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping

__all__ = [
    "HardwareConstraint", "MinimumCoreHardware", "MaximumCoreHardware",
    "MinimumRamCoreRatioHardware", "MaximumRamCoreRatioHardware", "MinimumRamHardware",
    "MaximumRamHardware", "SpecificHardware", "GpuHardware", "NoGpuHardware", "SSDHardware",
    "NoSSDHardware", "CpuModelHardware", "UnknownHardwareConstraint",
]

_KINDS: dict[str, type["HardwareConstraint"]] = {}


@dataclass(frozen=True)
class HardwareConstraint:
    """Base of the constraint classes. Each subclass declares its ``discriminator`` and, for
    each dataclass field, its wire key in ``metadata={"wire": ...}``."""

    discriminator: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.discriminator:
            _KINDS[cls.discriminator] = cls

    @staticmethod
    def from_json(doc: Mapping[str, Any]) -> "HardwareConstraint":
        """The constraint for a wire document (an :class:`UnknownHardwareConstraint` when its
        discriminator is unknown)."""
        kind = _KINDS.get(str(doc.get("discriminator")))
        if kind is None:
            return UnknownHardwareConstraint(dict(doc))
        return kind(**{f.name: doc.get(f.metadata["wire"]) for f in fields(kind)})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"discriminator": self.discriminator}
        doc.update({f.metadata["wire"]: getattr(self, f.name) for f in fields(self)})
        return doc


def _wire(key: str) -> Any:
    return field(metadata={"wire": key})


@dataclass(frozen=True)
class MinimumCoreHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "MinimumCoreHardwareConstraint"
    core_count: int = _wire("coreCount")


@dataclass(frozen=True)
class MaximumCoreHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "MaximumCoreHardwareConstraint"
    core_count: int = _wire("coreCount")


@dataclass(frozen=True)
class MinimumRamCoreRatioHardware(HardwareConstraint):
    """At least this many GB of memory per core."""

    discriminator: ClassVar[str] = "MinimumRamCoreRatioHardwareConstraint"
    minimum_memory_gb_core_ratio: float = _wire("minimumMemoryGBCoreRatio")


@dataclass(frozen=True)
class MaximumRamCoreRatioHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "MaximumRamCoreRatioHardwareConstraint"
    maximum_memory_gb_core_ratio: float = _wire("maximumMemoryGBCoreRatio")


@dataclass(frozen=True)
class MinimumRamHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "MinimumRamHardwareConstraint"
    minimum_memory_mb: float = _wire("minimumMemoryMB")


@dataclass(frozen=True)
class MaximumRamHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "MaximumRamHardwareConstraint"
    maximum_memory_mb: float = _wire("maximumMemoryMB")


@dataclass(frozen=True)
class SpecificHardware(HardwareConstraint):
    """One machine specification, e.g. ``"28c-128g-intel-dual-xeon2680v4-ssd"``."""

    discriminator: ClassVar[str] = "SpecificHardwareConstraint"
    specification_key: str = _wire("specificationKey")


@dataclass(frozen=True)
class GpuHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "GpuHardwareConstraint"


@dataclass(frozen=True)
class NoGpuHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "NoGpuHardwareConstraint"


@dataclass(frozen=True)
class SSDHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "SSDHardwareConstraint"


@dataclass(frozen=True)
class NoSSDHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "NoSSDHardwareConstraint"


@dataclass(frozen=True)
class CpuModelHardware(HardwareConstraint):
    discriminator: ClassVar[str] = "CpuModelHardwareConstraint"
    cpu_model: str = _wire("cpuModel")


@dataclass(frozen=True)
class UnknownHardwareConstraint(HardwareConstraint):
    """A constraint of a kind this SDK does not know: the raw document, sent back as is."""

    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> Any:
        """The raw ``discriminator``."""
        return self.raw.get("discriminator")

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)
