"""A job's dependency graph as inline SVG, drawn on the server (no script, no graph library).

Layers run top to bottom (parents above their children); a node is a box coloured by its task's
state and linking to the task's page; an edge is a curve with an arrowhead, passing through its
waypoints when it spans several layers (:func:`qcompute.server.services.job_graph.layout`).
"""
from __future__ import annotations

from typing import Callable

from markupsafe import Markup, escape

from ..services.job_graph import JobGraph, layout

__all__ = ["render_graph", "STATE_COLOURS"]

NODE_W, NODE_H = 168, 40  # px
GAP_X, GAP_Y = 24, 44
PAD = 12
LABEL_CHARS = 22

# fill, text: the task's state families (the Qarnot states; others are grey)
STATE_COLOURS = {
    "Submitted": ("#e5e7eb", "#111827"),
    "PartiallyDispatched": ("#dbeafe", "#1e3a8a"),
    "FullyDispatched": ("#dbeafe", "#1e3a8a"),
    "PartiallyExecuting": ("#bfdbfe", "#1e3a8a"),
    "FullyExecuting": ("#93c5fd", "#1e3a8a"),
    "DownloadingResults": ("#bfdbfe", "#1e3a8a"),
    "UploadingResults": ("#bfdbfe", "#1e3a8a"),
    "Success": ("#bbf7d0", "#14532d"),
    "Failure": ("#fecaca", "#7f1d1d"),
    "Cancelled": ("#fde68a", "#78350f"),
}
_OTHER = ("#f3f4f6", "#111827")


def _label(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1] + "…"


def render_graph(graph: JobGraph, href: Callable[[str], str]) -> Markup:
    """The SVG of ``graph``; ``href(uuid)`` is the link of a task's node."""
    plan = layout([n.uuid for n in graph.nodes], graph.edges)
    centre: dict = {}
    for row, slots in enumerate(plan.layers):
        for col, slot in enumerate(slots):
            centre[slot] = (PAD + col * (NODE_W + GAP_X) + NODE_W / 2,
                            PAD + row * (NODE_H + GAP_Y) + NODE_H / 2)
    width = PAD * 2 + max((len(s) for s in plan.layers), default=0) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + len(plan.layers) * (NODE_H + GAP_Y) - GAP_Y
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="job-graph" role="img" '
             f'width="{max(width, 0)}" height="{max(height, 0)}" '
             f'viewBox="0 0 {max(width, 0)} {max(height, 0)}">',
             f'<title>{escape(f"dependencies of {len(graph.nodes)} tasks")}</title>',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0 0L10 5L0 10z" '
             'fill="#6b7280"/></marker></defs>']
    for parent, child in dict.fromkeys(graph.edges):
        if parent in centre and child in centre:
            parts.append(_edge([centre[parent], *(centre[w] for w in plan.routes.get(
                (parent, child), ()))], centre[child]))
    for node in graph.nodes:
        x, y = centre[node.uuid]
        fill, ink = STATE_COLOURS.get(node.state, _OTHER)
        parts.append(
            f'<a href="{escape(href(node.uuid))}" class="graph-node" data-uuid="{escape(node.uuid)}"'
            f' data-state="{escape(node.state)}"><title>{escape(node.name)} — '
            f'{escape(node.state)}</title>'
            f'<rect x="{x - NODE_W / 2:g}" y="{y - NODE_H / 2:g}" width="{NODE_W}" '
            f'height="{NODE_H}" rx="6" fill="{fill}" stroke="#6b7280"/>'
            f'<text x="{x:g}" y="{y - 3:g}" text-anchor="middle" font-size="13" fill="{ink}">'
            f'{escape(_label(node.name))}</text>'
            f'<text x="{x:g}" y="{y + 13:g}" text-anchor="middle" font-size="11" fill="{ink}">'
            f'{escape(node.state)}</text></a>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _edge(points: list[tuple[float, float]], end: tuple[float, float]) -> str:
    """A smooth path from the bottom of the first box, through each waypoint, to the top of the
    last box (vertical tangents, so it enters and leaves the boxes straight)."""
    (x0, y0), *through = points
    d = [f"M{x0:g} {y0 + NODE_H / 2:g}"]
    prev = (x0, y0 + NODE_H / 2)
    for x, y in [*through, (end[0], end[1] - NODE_H / 2)]:
        mid = (prev[1] + y) / 2
        d.append(f"C{prev[0]:g} {mid:g} {x:g} {mid:g} {x:g} {y:g}")
        prev = (x, y)
    return f'<path d="{" ".join(d)}" fill="none" stroke="#6b7280" marker-end="url(#arrow)"/>'

