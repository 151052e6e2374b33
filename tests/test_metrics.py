"""Graph metrics on hand-made graphs whose scores are known."""

from __future__ import annotations

import numpy as np
import pytest

from postprocess.geodesy import project_graph
from postprocess.metrics import apls, graph_from_lines, graph_metrics, length_precision_recall, topo
from postprocess.roadgraph import RoadGraph

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 4000000.0


def grid_lines(n: int = 4, step: float = 100.0, dx: float = 0.0, dy: float = 0.0) -> list[np.ndarray]:
    """A street grid: n horizontal and n vertical lines with a vertex at every crossing."""
    s = np.arange(n) * step
    lines = []
    for i in range(n):
        lines.append(np.column_stack([X0 + dx + s, np.full(n, Y0 + dy + i * step)]))
        lines.append(np.column_stack([np.full(n, X0 + dx + i * step), Y0 + dy + s]))
    return lines


def two_roads(keep: tuple[int, ...] = (0, 1)) -> RoadGraph:
    """Two parallel 400 m roads 200 m apart, each with a vertex every 50 m."""
    s = np.arange(0, 401, 50.0)
    lines = [np.column_stack([X0 + s, np.full(len(s), Y0 + k * 200.0)]) for k in keep]
    return graph_from_lines(lines, UTM)


@pytest.fixture(scope="module")
def grid() -> RoadGraph:
    return graph_from_lines(grid_lines(), UTM)


def test_graph_from_lines_nodes_at_shared_vertices(grid):
    assert len(grid.nodes) == 16 and len(grid.edges) == 24
    assert sorted(set(grid.degree().values())) == [2, 3, 4]
    assert grid.total_length_m == pytest.approx(2400.0, rel=1e-3)


def test_identical_graphs_score_one(grid):
    m = graph_metrics(grid, grid)
    assert m["apls"]["apls"] == pytest.approx(1.0, abs=1e-6)
    assert m["topo"]["precision"] == pytest.approx(1.0) and m["topo"]["recall"] == pytest.approx(1.0)
    assert m["length"]["precision"] == pytest.approx(1.0) and m["length"]["recall"] == pytest.approx(1.0)
    assert m["length"]["f1"] == pytest.approx(1.0)


def test_disjoint_graphs_score_zero(grid):
    far = graph_from_lines(grid_lines(dx=5000.0), UTM)
    assert apls(grid, far)["apls"] == 0.0
    t = topo(grid, far)
    assert t["recall"] == 0.0 and t["f1"] == 0.0
    pr = length_precision_recall(grid, far)
    assert pr["precision"] == 0.0 and pr["recall"] == 0.0 and pr["f1"] == 0.0


def test_half_the_length_missing():
    both, one = two_roads((0, 1)), two_roads((0,))
    pr = length_precision_recall(both, one)
    assert pr["recall"] == pytest.approx(0.5, abs=0.01) and pr["precision"] == pytest.approx(1.0)
    t = topo(both, one, n_seeds=200)
    assert t["precision"] == pytest.approx(1.0) and t["recall"] == pytest.approx(0.5, abs=0.1)
    a = apls(both, one)
    assert a["proposal_to_truth"] == pytest.approx(1.0, abs=1e-6) and 0.2 < a["truth_to_proposal"] < 0.6


def test_buffer_decides_offsets(grid):
    shifted = graph_from_lines(grid_lines(dx=3.0, dy=0.0), UTM)  # 3 m east: verticals off by 3 m
    assert length_precision_recall(grid, shifted, buffer_m=5.0)["f1"] == pytest.approx(1.0)
    assert length_precision_recall(grid, shifted, buffer_m=2.0)["recall"] == pytest.approx(0.5, abs=0.02)


def test_apls_one_cut_link_is_below_one_and_symmetric(grid):
    lines = grid_lines()
    v = lines[1]  # the vertical line x = X0: cut its middle link
    cut = [ln for k, ln in enumerate(lines) if k != 1] + [v[:2], v[2:]]
    g_cut = graph_from_lines(cut, UTM)
    assert len(g_cut.edges) == len(grid.edges) - 1
    a, b = apls(grid, g_cut), apls(g_cut, grid)
    assert 0.8 < a["apls"] < 1.0
    assert a["apls"] == pytest.approx(b["apls"], rel=1e-9)
    assert a["truth_to_proposal"] == pytest.approx(b["proposal_to_truth"], rel=1e-9)
    assert a["truth_to_proposal"] < a["proposal_to_truth"]  # routes of the truth are lost, not invented
    # a detour is worse than nothing missing, better than a graph cut in half
    half = graph_from_lines([ln for ln in lines if ln[0, 1] == ln[-1, 1]], UTM)  # horizontals only
    assert apls(grid, half)["apls"] < a["apls"]


def test_same_scores_in_degrees(grid):
    ll = project_graph(grid, "EPSG:4326")
    shifted = graph_from_lines(grid_lines(dx=3.0), UTM)
    ll_shift = project_graph(shifted, "EPSG:4326")
    a = length_precision_recall(grid, shifted, buffer_m=2.0)
    b = length_precision_recall(ll, ll_shift, buffer_m=2.0)
    assert b["recall"] == pytest.approx(a["recall"], abs=0.01)
    assert apls(ll, ll)["apls"] == pytest.approx(1.0, abs=1e-6)


def test_empty_graphs():
    empty = RoadGraph(UTM)
    g = two_roads()
    pr = length_precision_recall(g, empty)
    assert pr["precision"] is None and pr["recall"] == 0.0 and pr["f1"] == 0.0
    assert apls(g, empty)["apls"] == 0.0
    assert topo(empty, g)["recall"] is None
