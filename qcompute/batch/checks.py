"""Everything checked before a batch file runs. :func:`local_problems` needs only the file (and
the local directories it names); :func:`cluster_problems` asks the cluster (profiles, hardware,
secrets, the account's bucket prefix). Each returns every problem found, never the first only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from .._command import CommandError, check_command
from .._objects import bucket_name_problem
from ..exceptions import TransportError
from .locate import Path, format_path
from .models import COMMAND_CONSTANT, Batch, Hardware

if TYPE_CHECKING:
    from ..connection import Connection

__all__ = ["Problem", "local_problems", "cluster_problems", "unreachable", "find_cycles",
           "hardware_constraints"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a batch file: where (a key path, and its line when found), and why."""

    path: Path
    message: str
    line: Optional[int] = None

    def __str__(self) -> str:
        return self.render()

    def render(self, file: str = "") -> str:
        """``file:line: key.path: message``, with the parts that are known."""
        head = ":".join(str(part) for part in (file, self.line) if part)
        where = format_path(self.path)
        return ": ".join(part for part in (head, where, self.message) if part)


def find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """The dependency cycles of a graph ``name -> names it depends on``, each listed once, as
    ``[a, b, ..., a]`` in dependency order."""
    cycles: list[list[str]] = []
    seen: set[str] = set()
    for start in edges:
        stack: list[str] = []
        on_stack: set[str] = set()

        def visit(node: str) -> None:
            if node in on_stack:
                cycle = stack[stack.index(node):] + [node]
                if not any(set(cycle) == set(c) for c in cycles):
                    cycles.append(cycle)
                return
            if node in seen or node not in edges:
                return
            stack.append(node)
            on_stack.add(node)
            for parent in edges[node]:
                visit(parent)
            stack.pop()
            on_stack.discard(node)
            seen.add(node)

        visit(start)
    return cycles


def local_problems(batch: Batch, base: FsPath) -> list[Problem]:
    """The problems found without the cluster: names, dependencies, local paths, commands and
    bucket names. ``base`` is the directory relative paths start from (the file's)."""
    found: list[Problem] = []
    names: dict[str, int] = {}
    for i, task in enumerate(batch.tasks):
        if task.name in names:
            found.append(Problem(("tasks", i, "name"), f"duplicate task name {task.name!r} "
                                 f"(also tasks[{names[task.name]}])"))
        names.setdefault(task.name, i)
    edges: dict[str, list[str]] = {}
    for i, task in enumerate(batch.tasks):
        for j, dep in enumerate(task.depends_on):
            if dep.task not in names:
                found.append(Problem(("tasks", i, "depends_on", j),
                                     f"no task is named {dep.task!r}"))
        edges.setdefault(task.name, [d.task for d in task.depends_on if d.task in names])
        found += _task_problems(batch, i)
    for cycle in find_cycles(edges):
        found.append(Problem(("tasks", names[cycle[0]], "depends_on"),
                             "dependency cycle: " + " -> ".join(cycle)))
    for name, res in batch.resources.items():
        found += _bucket_problems(("resources", name, "bucket"), res.bucket)
        if res.path is not None and not (base / res.path).is_dir():
            state = "is not a directory" if (base / res.path).exists() else "does not exist"
            found.append(Problem(("resources", name, "path"),
                                 f"the local directory {str(base / res.path)!r} {state}"))
        if res.path is not None and res.prefix is None and batch.results is not None \
                and res.bucket == batch.results.bucket:
            found.append(Problem(("resources", name, "prefix"), "this directory is mirrored "
                                 "into the results bucket: give it a prefix, or the upload "
                                 "would delete the results"))
    if batch.results is not None:
        found += _bucket_problems(("results", "bucket"), batch.results.bucket)
        target = batch.results.download_to
        if target is not None and (base / target).exists() and not (base / target).is_dir():
            found.append(Problem(("results", "download_to"),
                                 f"{str(base / target)!r} exists and is not a directory"))
    return found


def _task_problems(batch: Batch, i: int) -> Iterator[Problem]:
    task = batch.tasks[i]
    if task.profile is None and batch.pool is None:
        yield Problem(("tasks", i, "profile"), "no profile: name one, or define [pool] for the "
                      "task to run in")
    for j, name in enumerate(task.resources):
        if name not in batch.resources:
            known = ", ".join(batch.resources) or "none"
            yield Problem(("tasks", i, "resources", j),
                          f"no [resources.{name}] table (defined: {known})")
    command = task.all_constants.get(COMMAND_CONSTANT)
    if command is not None:
        where = "command" if task.command is not None else "constants"
        try:
            check_command(command, task.all_constants)
        except CommandError as exc:
            yield Problem(("tasks", i, where), str(exc))


def _bucket_problems(path: Path, name: str) -> list[Problem]:
    problem = bucket_name_problem(name)
    return [Problem(path, f"{name!r} is not a valid bucket name: {problem}")] if problem else []


# -- against the cluster ----------------------------------------------------------------------

def hardware_constraints(hardware: Optional[Hardware]) -> list[Any]:
    """The SDK's hardware constraints for a ``hardware`` table."""
    from .. import hardware as hw

    if hardware is None:
        return []
    pairs = [(hardware.min_cores, hw.MinimumCoreHardware),
             (hardware.max_cores, hw.MaximumCoreHardware),
             (hardware.min_ram_mb, hw.MinimumRamHardware),
             (hardware.max_ram_mb, hw.MaximumRamHardware),
             (hardware.min_ram_gb_per_core, hw.MinimumRamCoreRatioHardware),
             (hardware.max_ram_gb_per_core, hw.MaximumRamCoreRatioHardware),
             (hardware.specific, hw.SpecificHardware), (hardware.cpu_model, hw.CpuModelHardware)]
    found: list[Any] = [kind(value) for value, kind in pairs if value is not None]
    if hardware.gpu is not None:
        found.append(hw.GpuHardware() if hardware.gpu else hw.NoGpuHardware())
    if hardware.ssd is not None:
        found.append(hw.SSDHardware() if hardware.ssd else hw.NoSSDHardware())
    return found


# What the offered constraints (GET /hardware-constraints: each node kind's cores, memory, ratio,
# CPU model, specification keys, GPU and SSD) say about a wanted one: discriminator -> (offered
# discriminator, its field, the wanted field, does an offered value meet the wanted one).
_OFFERS: dict[str, tuple[str, Optional[str], Optional[str], Callable[[Any, Any], bool]]] = {
    "MinimumCoreHardwareConstraint": ("MinimumCoreHardwareConstraint", "coreCount", "coreCount",
                                      lambda have, want: have >= want),
    "MaximumCoreHardwareConstraint": ("MinimumCoreHardwareConstraint", "coreCount", "coreCount",
                                      lambda have, want: have <= want),
    "MinimumRamHardwareConstraint": ("MinimumRamHardwareConstraint", "minimumMemoryMB",
                                     "minimumMemoryMB", lambda have, want: have >= want),
    "MaximumRamHardwareConstraint": ("MinimumRamHardwareConstraint", "minimumMemoryMB",
                                     "maximumMemoryMB", lambda have, want: have <= want),
    "MinimumRamCoreRatioHardwareConstraint": (
        "MinimumRamCoreRatioHardwareConstraint", "minimumMemoryGBCoreRatio",
        "minimumMemoryGBCoreRatio", lambda have, want: have >= want),
    "MaximumRamCoreRatioHardwareConstraint": (
        "MinimumRamCoreRatioHardwareConstraint", "minimumMemoryGBCoreRatio",
        "maximumMemoryGBCoreRatio", lambda have, want: have <= want + 0.01),  # offers round down
    "SpecificHardwareConstraint": ("SpecificHardwareConstraint", "specificationKey",
                                   "specificationKey",
                                   lambda have, want: str(have).lower() == str(want).lower()),
    "CpuModelHardwareConstraint": ("CpuModelHardwareConstraint", "cpuModel", "cpuModel",
                                   lambda have, want: str(want).lower() in str(have).lower()),
    **{kind: (kind, None, None, lambda have, want: True) for kind in (
        "GpuHardwareConstraint", "NoGpuHardwareConstraint", "SSDHardwareConstraint",
        "NoSSDHardwareConstraint")},
}


def _unmet(constraints: list[Any], offered: list[dict[str, Any]]) -> list[str]:
    """The wanted constraints that no node kind of the cluster offers, each checked on its own
    (a combination spread over different node kinds is left to the server)."""
    unmet = []
    for constraint in constraints:
        doc = constraint.to_json()
        rule = _OFFERS.get(doc.get("discriminator"))
        if rule is None:
            continue
        kind, have_key, want_key, meets = rule
        values = [o.get(have_key) if have_key else None for o in offered
                  if o.get("discriminator") == kind]
        want = doc.get(want_key) if want_key else None
        if not any(meets(v, want) for v in values):
            detail = f"({want_key}={want!r})" if want_key else ""
            unmet.append(f"{doc['discriminator']}{detail}")
    return unmet


def _describe_offers(offered: list[dict[str, Any]]) -> str:
    keys = [o["specificationKey"] for o in offered
            if o.get("discriminator") == "SpecificHardwareConstraint"]
    return ", ".join(keys) or "no node"


def cluster_problems(batch: Batch, conn: "Connection") -> list[Problem]:
    """The problems only the cluster can tell: unknown profiles, unsatisfiable hardware
    constraints, secrets it does not have, bucket names outside the account's prefix.

    An unreachable cluster gives one problem that says so (at path ``()``)."""
    try:
        return list(_cluster_problems(batch, conn))
    except TransportError as exc:
        return [Problem((), f"the cluster checks did not run: {exc}")]


def _cluster_problems(batch: Batch, conn: "Connection") -> Iterator[Problem]:
    profiles = conn.profiles_names()
    owners: list[tuple[Path, Any]] = ([(("pool",), batch.pool)] if batch.pool else []) + \
        [(("tasks", i), t) for i, t in enumerate(batch.tasks)]
    for path, owner in owners:
        if owner.profile is not None and owner.profile not in profiles:
            yield Problem(path + ("profile",), f"unknown profile {owner.profile!r}; the cluster "
                          f"has: {', '.join(profiles) or 'none'}")
    if any(owner.hardware for _, owner in owners):
        offered = [c.to_json() for c in conn.all_hardware_constraints()]
        for path, owner in owners:
            unmet = _unmet(hardware_constraints(owner.hardware), offered)
            if unmet:
                yield Problem(path + ("hardware",), f"no node of the cluster satisfies "
                              f"{', '.join(unmet)}; it offers: {_describe_offers(offered)}")
    folders: dict[str, set[str]] = {}
    for i, task in enumerate(batch.tasks):
        for j, key in enumerate(task.secrets):
            key = key.strip("/")
            folder = key.rsplit("/", 1)[0] if "/" in key else ""
            if folder not in folders:
                folders[folder] = set(conn.secrets.list(folder))
            if key not in folders[folder]:
                yield Problem(("tasks", i, "secrets", j), f"the cluster has no secret {key!r}")
    buckets = [(("resources", n, "bucket"), r.bucket) for n, r in batch.resources.items()]
    if batch.results is not None:
        buckets.append((("results", "bucket"), batch.results.bucket))
    prefix = conn.user_info.raw.get("bucketPrefix")
    for path, name in buckets:
        if isinstance(prefix, str) and prefix and not name.startswith(prefix):
            yield Problem(path, f"bucket {name!r} is outside your bucket prefix {prefix!r} "
                          f"(GET /info): name it {prefix + name!r}, for example")


def unreachable(problems: list[Problem]) -> bool:
    """Whether the cluster checks did not run because the cluster could not be reached."""
    return any(p.path == () and p.message.startswith("the cluster checks did not run")
               for p in problems)

