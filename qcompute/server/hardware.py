"""What a node offers (cores, memory, CPU model, GPU, SSD, labels), and how this host is probed.

Every executor slot on a node shares that node's capabilities: hardware constraints are checked
against nodes, not against a slot's share. The local executor runs on one node kind (this host);
an executor spanning a cluster advertises one :class:`NodeCapabilities` per node kind.

The specification key of a node kind (``SpecificHardwareConstraint``) is
``<cores>c-<memory GiB>g-<cpu model slug>[-gpu][-ssd]``, for example ``2c-24g-amd-epyc-7b13`` or
``28c-128g-intel-xeon-e5-2680-v4-ssd``: the slug is the lower-cased CPU model without
``(R)``/``(TM)``/``CPU``/``Processor``/``@ <clock>``, every other run of non-alphanumerics a ``-``.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NodeCapabilities", "NodeOverrides", "detect", "slugify_cpu_model"]

_NOISE = re.compile(r"\((r|tm|c)\)|\bcpu\b|\bprocessor\b|@\s*[\d.]+\s*[gm]hz|\b\d+-core\b", re.I)
_CLOCK = re.compile(r"@\s*([\d.]+)\s*GHz", re.I)


def slugify_cpu_model(model: str) -> str:
    """``"Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"`` -> ``"intel-xeon-e5-2680-v4"``."""
    return re.sub(r"[^a-z0-9]+", "-", _NOISE.sub(" ", model).lower()).strip("-") or "unknown"


class NodeCapabilities(BaseModel):
    """One node kind: what each of its executor slots can offer a task."""

    model_config = ConfigDict(extra="forbid")

    cores: int = Field(ge=1)
    memory_mb: int = Field(ge=1)
    cpu_model: str = "unknown"
    clock_ghz: Optional[float] = Field(default=None, gt=0)
    gpu: bool = False
    ssd: bool = False
    labels: list[str] = Field(default_factory=list)

    @property
    def memory_gb_per_core(self) -> float:
        return self.memory_mb / 1024 / self.cores

    @property
    def spec_key(self) -> str:
        key = f"{self.cores}c-{max(1, round(self.memory_mb / 1024))}g-"
        key += slugify_cpu_model(self.cpu_model)
        return key + ("-gpu" if self.gpu else "") + ("-ssd" if self.ssd else "")

    def describe(self) -> str:
        """``8c-16g-amd-epyc (8 cores, 16384 MB, AMD EPYC, no GPU, SSD)``, for messages."""
        return (f"{self.spec_key} ({self.cores} cores, {self.memory_mb} MB, {self.cpu_model}, "
                f"{'GPU' if self.gpu else 'no GPU'}, {'SSD' if self.ssd else 'no SSD'}"
                + (f", labels {', '.join(self.labels)}" if self.labels else "") + ")")

    def to_json(self) -> dict[str, Any]:
        return {"specificationKey": self.spec_key, "cores": self.cores,
                "memoryMB": self.memory_mb, "cpuModel": self.cpu_model,
                "clockGHz": self.clock_ghz, "gpu": self.gpu, "ssd": self.ssd,
                "labels": list(self.labels)}


class NodeOverrides(BaseModel):
    """Settings that replace what :func:`detect` would find (``None``: detect it)."""

    model_config = ConfigDict(extra="forbid")

    cores: Optional[int] = Field(default=None, ge=1)
    memory_mb: Optional[int] = Field(default=None, ge=1)
    cpu_model: Optional[str] = Field(default=None, min_length=1)
    clock_ghz: Optional[float] = Field(default=None, gt=0)
    gpu: Optional[bool] = None
    ssd: Optional[bool] = None
    labels: list[str] = Field(default_factory=list)


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_value(text: str, key: str) -> Optional[str]:
    match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else None


def _memory_mb() -> int:
    match = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read("/proc/meminfo"), re.M)
    if match:
        return max(1, int(match.group(1)) // 1024)
    try:
        return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 1


def _clock_ghz(cpuinfo: str, model: str) -> Optional[float]:
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        return round(int(max_khz) / 1e6, 2)
    if match := _CLOCK.search(model):
        return float(match.group(1))
    mhz = _cpuinfo_value(cpuinfo, "cpu MHz")
    try:
        return round(float(mhz) / 1000, 2) if mhz else None
    except ValueError:
        return None


def _is_ssd(path: Path) -> bool:
    """Whether the block device holding ``path`` is non-rotational (False when unknown)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        dev = os.stat(path).st_dev
        device = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve(strict=True)
    except OSError:
        return False
    if (device / "partition").exists():
        device = device.parent
    return _read(device / "queue" / "rotational").strip() == "0"


def detect(data_dir: Path, overrides: Optional[NodeOverrides] = None) -> NodeCapabilities:
    """This host's capabilities: cheap reads of /proc and /sys, never a subprocess."""
    over = overrides or NodeOverrides()
    cpuinfo = _read("/proc/cpuinfo") if over.cpu_model is None or over.clock_ghz is None else ""
    model = over.cpu_model or _cpuinfo_value(cpuinfo, "model name") or "unknown"
    return NodeCapabilities(
        cores=over.cores or os.cpu_count() or 1,
        memory_mb=over.memory_mb or _memory_mb(),
        cpu_model=model,
        clock_ghz=over.clock_ghz or _clock_ghz(cpuinfo, model),
        gpu=over.gpu if over.gpu is not None else shutil.which("nvidia-smi") is not None,
        ssd=over.ssd if over.ssd is not None else _is_ssd(Path(data_dir)),
        labels=list(over.labels),
    )
