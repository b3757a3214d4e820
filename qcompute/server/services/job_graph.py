"""A job's dependency graph, and its layered layout (the console draws it as SVG).

The layout is a small Sugiyama: each task goes to the layer after its deepest parent (longest
path), an edge spanning several layers passes through one waypoint per layer in between (so it
is routed around the nodes, not through them), and a few barycenter sweeps order each layer to
cut crossings. Pure functions over ids: no database, no drawing.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import Job, Task, TaskDependency

__all__ = ["GraphNode", "JobGraph", "Layout", "job_graph", "layout", "MAX_GRAPH_TASKS"]

MAX_GRAPH_TASKS = 300  # a larger job gets its first tasks drawn, and says so
_SWEEPS = 4  # barycenter passes (down, up, down, up)


@dataclass(frozen=True)
class GraphNode:
    uuid: str
    name: str
    state: str


@dataclass(frozen=True)
class JobGraph:
    nodes: list[GraphNode]
    edges: list[tuple[str, str]]  # (parent uuid, child uuid)
    total: int  # tasks in the job; more than len(nodes) when the graph was cut


def job_graph(session: Session, job: Job, limit: int = MAX_GRAPH_TASKS) -> JobGraph:
    """The job's first ``limit`` tasks (submission order) and the dependencies among them."""
    tasks = list(session.execute(
        select(Task.id, Task.uuid, Task.name, Task.state).where(Task.job_id == job.id)
        .order_by(Task.id).limit(limit + 1)))
    total = len(tasks) if len(tasks) <= limit else _count(session, job)
    tasks = tasks[:limit]
    by_id = {t.id: t.uuid for t in tasks}
    known = set(by_id.values())
    edges = [(parent, by_id[child]) for child, parent in session.execute(
        select(TaskDependency.task_id, TaskDependency.parent_uuid)
        .where(TaskDependency.task_id.in_(by_id)).order_by(TaskDependency.task_id))
        if parent in known]
    return JobGraph([GraphNode(t.uuid, t.name, t.state) for t in tasks], edges, total)


def _count(session: Session, job: Job) -> int:
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(Task).where(Task.job_id == job.id))


@dataclass(frozen=True)
class Waypoint:
    """A place in a layer that a long edge passes through."""

    edge: tuple[Hashable, Hashable]
    layer: int


@dataclass
class Layout:
    layers: list[list[Hashable]]  # each layer's slots in order: node ids and Waypoints
    routes: dict[tuple[Hashable, Hashable], list[Waypoint]] = field(default_factory=dict)

    def layer_of(self, node: Hashable) -> int:
        return next(n for n, layer in enumerate(self.layers) if node in layer)


def layout(nodes: Sequence[Hashable], edges: Iterable[tuple[Hashable, Hashable]]) -> Layout:
    """Layers for ``nodes`` such that every edge (parent, child) goes down at least one layer.

    Edges naming unknown nodes, self-loops and duplicates are ignored; nodes on a cycle (which
    dependencies cannot make, since a parent exists before its child) go below the rest.
    """
    known = set(nodes)
    edges = list(dict.fromkeys((p, c) for p, c in edges if p in known and c in known and p != c))
    depth = _depths(nodes, edges)
    layers: list[list[Hashable]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in nodes:
        layers[depth[node]].append(node)
    routes = {}
    for parent, child in edges:
        if depth[child] - depth[parent] > 1:
            points = [Waypoint((parent, child), n) for n in range(depth[parent] + 1, depth[child])]
            for point in points:
                layers[point.layer].append(point)
            routes[(parent, child)] = points
    _order(layers, _neighbours(edges, routes))
    return Layout(layers, routes)


def _depths(nodes: Sequence[Hashable], edges: list[tuple[Hashable, Hashable]]) -> dict:
    """Longest path from a source, by Kahn's topological order."""
    children, waiting = defaultdict(list), {n: 0 for n in nodes}
    for parent, child in edges:
        children[parent].append(child)
        waiting[child] += 1
    depth = {n: 0 for n in nodes}
    ready = [n for n in nodes if waiting[n] == 0]
    placed = 0
    while ready:
        node = ready.pop()
        placed += 1
        for child in children[node]:
            depth[child] = max(depth[child], depth[node] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if placed < len(nodes):  # a cycle: its members below everything placed
        bottom = max(depth.values(), default=0) + 1
        for node in nodes:
            if waiting[node]:
                depth[node] = bottom
    return depth


def _neighbours(edges, routes) -> tuple[dict, dict]:
    """Each slot's slots in the layer above and in the layer below, waypoints included."""
    up, down = defaultdict(list), defaultdict(list)
    for parent, child in edges:
        chain = [parent, *routes.get((parent, child), ()), child]
        for above, below in zip(chain, chain[1:]):
            down[above].append(below)
            up[below].append(above)
    return up, down


def _order(layers: list[list[Hashable]], neighbours: tuple[dict, dict]) -> None:
    """Reorder each layer by the mean position of its neighbours in the layer just swept
    (stable: slots without neighbours keep their place)."""
    up, down = neighbours
    for sweep in range(_SWEEPS):
        downward = sweep % 2 == 0
        indices = range(1, len(layers)) if downward else range(len(layers) - 2, -1, -1)
        for n in indices:
            fixed = layers[n - 1] if downward else layers[n + 1]
            position = {slot: i for i, slot in enumerate(fixed)}
            near = up if downward else down

            def key(item, position=position, near=near):
                index, slot = item
                seen = [position[s] for s in near[slot] if s in position]
                return sum(seen) / len(seen) if seen else index

            layers[n] = [slot for _, slot in sorted(enumerate(layers[n]), key=key)]
