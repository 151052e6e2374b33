"""The road graph handed between vectorize, conflation, verification, writers and metrics.

Coordinates are in the grid's CRS (which may be geographic); every length is in metres, computed once by the
vectorizer (geodesic for geographic CRSs) and stored on the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RoadEdge:
    """One road segment between two nodes."""

    id: int
    u: int  # node id at coords[0]
    v: int  # node id at coords[-1]
    coords: np.ndarray  # (M, 2) float64 x, y in the grid CRS, endpoints included
    length_m: float
    confidence: float = 1.0  # mean probability along the edge, 0..1
    attrs: dict = field(default_factory=dict)  # gps_support, confirmed, reason, osm_node_u/v, ... added downstream


@dataclass
class RoadGraph:
    """Nodes and edges of a road network on one grid."""

    crs_wkt: str
    nodes: dict[int, tuple[float, float]] = field(default_factory=dict)  # node id -> (x, y) in the grid CRS
    edges: list[RoadEdge] = field(default_factory=list)
    node_attrs: dict[int, dict] = field(default_factory=dict)  # e.g. {"osm_id": 123, "osm_version": 4}

    @property
    def total_length_m(self) -> float:
        return float(sum(e.length_m for e in self.edges))

    def degree(self) -> dict[int, int]:
        """Number of edge ends at each node (a self-loop counts twice)."""
        deg = dict.fromkeys(self.nodes, 0)
        for e in self.edges:
            deg[e.u] = deg.get(e.u, 0) + 1
            deg[e.v] = deg.get(e.v, 0) + 1
        return deg

    def to_networkx(self):
        """A networkx MultiGraph (node attr `xy`, edge attrs `coords`, `length_m`, `id`)."""
        import networkx as nx

        g = nx.MultiGraph()
        for n, xy in self.nodes.items():
            g.add_node(n, xy=xy, **self.node_attrs.get(n, {}))
        for e in self.edges:
            g.add_edge(e.u, e.v, key=e.id, id=e.id, coords=e.coords, length_m=e.length_m, confidence=e.confidence,
                       **e.attrs)
        return g
