"""The job dependency graph: its layered layout (pure), its SVG, and the graph read from a job."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from qcompute.server.console.graph import STATE_COLOURS, render_graph
from qcompute.server.services.job_graph import GraphNode, JobGraph, Waypoint, job_graph, layout

SVG = "{http://www.w3.org/2000/svg}"


def assert_edges_go_down(plan, edges):
    for parent, child in edges:
        assert plan.layer_of(parent) < plan.layer_of(child), (parent, child)


def test_a_diamond_has_three_layers_and_the_middle_pair_side_by_side():
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    plan = layout(["a", "b", "c", "d"], edges)
    assert plan.layers == [["a"], ["b", "c"], ["d"]]
    assert plan.routes == {}
    assert_edges_go_down(plan, edges)


def test_a_chain_is_one_task_per_layer():
    edges = [("t1", "t2"), ("t2", "t3"), ("t3", "t4")]
    plan = layout(["t3", "t1", "t4", "t2"], edges)  # submission order does not matter
    assert plan.layers == [["t1"], ["t2"], ["t3"], ["t4"]]


def test_a_lone_task_is_one_layer():
    assert layout(["solo"], []).layers == [["solo"]]


def test_no_tasks_no_layers():
    assert layout([], []).layers == []


def test_a_long_edge_passes_through_a_waypoint_in_each_layer_it_spans():
    edges = [("a", "b"), ("b", "c"), ("a", "c")]
    plan = layout(["a", "b", "c"], edges)
    assert [[s for s in layer if not isinstance(s, Waypoint)] for layer in plan.layers] == \
        [["a"], ["b"], ["c"]]
    assert plan.routes == {("a", "c"): [Waypoint(("a", "c"), 1)]}
    assert Waypoint(("a", "c"), 1) in plan.layers[1]
    assert_edges_go_down(plan, edges)


def test_unknown_nodes_self_loops_and_duplicates_are_ignored():
    plan = layout(["a", "b"], [("a", "b"), ("a", "b"), ("b", "b"), ("x", "a")])
    assert plan.layers == [["a"], ["b"]]


def test_a_cycle_goes_below_the_rest_rather_than_looping():
    plan = layout(["a", "b", "c"], [("b", "c"), ("c", "b")])
    assert plan.layers[0] == ["a"]
    assert sorted(plan.layers[-1]) == ["b", "c"]


def test_ordering_uncrosses_two_parallel_chains():
    # Submitted so that the naive order crosses: a1→b1 and a2→b2 with b2 listed first.
    edges = [("a1", "b1"), ("a2", "b2")]
    plan = layout(["a1", "a2", "b2", "b1"], edges)
    top, bottom = plan.layers
    assert (top.index("a1") < top.index("a2")) == (bottom.index("b1") < bottom.index("b2"))


def test_a_wide_random_dag_keeps_every_edge_downward():
    import random

    rng = random.Random(7)
    nodes = [f"n{i}" for i in range(60)]
    edges = [(nodes[i], nodes[j]) for j in range(60) for i in rng.sample(range(j), min(j, 2))]
    plan = layout(nodes, edges)
    assert_edges_go_down(plan, edges)
    assert sorted(s for layer in plan.layers for s in layer if not isinstance(s, Waypoint)) \
        == sorted(nodes)


def _svg(graph: JobGraph) -> ET.Element:
    return ET.fromstring(str(render_graph(graph, lambda uuid: f"/console/tasks/{uuid}")))


def test_the_svg_has_one_linked_node_per_task_coloured_by_state_and_one_path_per_edge():
    graph = JobGraph([GraphNode("u1", "render <frames>", "Success"),
                      GraphNode("u2", "encode", "FullyExecuting"),
                      GraphNode("u3", "a very long name that does not fit a box", "Submitted")],
                     [("u1", "u2"), ("u2", "u3"), ("u1", "u3")], total=3)
    svg = _svg(graph)
    nodes = svg.findall(f"{SVG}a")
    assert [n.get("data-uuid") for n in nodes] == ["u1", "u2", "u3"]
    assert [n.get("href") for n in nodes] == [f"/console/tasks/u{i}" for i in (1, 2, 3)]
    assert [n.find(f"{SVG}rect").get("fill") for n in nodes] == [
        STATE_COLOURS["Success"][0], STATE_COLOURS["FullyExecuting"][0],
        STATE_COLOURS["Submitted"][0]]
    assert nodes[0].find(f"{SVG}title").text == "render <frames> — Success"  # escaped, parsed
    assert nodes[2].find(f"{SVG}text").text.endswith("…")
    assert len(svg.findall(f"{SVG}path")) == 3


def test_a_lone_task_draws_one_box_and_no_edge():
    svg = _svg(JobGraph([GraphNode("u", "alone", "Cancelled")], [], total=1))
    assert len(svg.findall(f"{SVG}a")) == 1 and svg.findall(f"{SVG}path") == []
    assert float(svg.get("width")) > 0 and float(svg.get("height")) > 0


def test_the_graph_of_a_job_is_its_tasks_and_their_dependencies(roomy):
    job = roomy.post("/jobs", json={"name": "pipeline", "useDependencies": True}).json()["uuid"]
    top = roomy.submit("echo", name="top", jobUuid=job)
    left = roomy.submit("echo", name="left", jobUuid=job, dependencies={"dependsOn": [top]})
    right = roomy.submit("echo", name="right", jobUuid=job, dependencies={"dependsOn": [top]})
    bottom = roomy.submit("echo", name="bottom", jobUuid=job,
                          dependencies={"dependsOn": [left, right]})
    from qcompute.server.services.jobs import get_job
    from qcompute.server.services.users import get_owner

    with roomy.client.app.state.ctx.sessions() as session:
        found = get_job(session, get_owner(session), job)
        graph = job_graph(session, found)
        cut = job_graph(session, found, limit=2)
    assert [n.name for n in graph.nodes] == ["top", "left", "right", "bottom"]
    assert sorted(graph.edges) == sorted([(top, left), (top, right), (left, bottom),
                                          (right, bottom)])
    assert graph.total == 4
    assert [n.uuid for n in cut.nodes] == [top, left] and cut.edges == [(top, left)]
    assert cut.total == 4
