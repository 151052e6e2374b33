"""JOSM `.osm` and osmChange `.osc` files of a proposed road graph.

- `.osm` (JOSM): `upload="false"` so the file itself can never be uploaded; nodes before ways; new objects have
  negative ids and no version; every road becomes one way tagged `highway=<highway>` plus review tags in the
  `roadmap:` namespace (`roadmap:id` = the edge id used in roads.gpkg and verification.csv, `roadmap:confidence`,
  `roadmap:gps_support`, `roadmap:confirmed`, `roadmap:reason` when known). Graph nodes that conflation tied to an
  existing OSM node (`graph.node_attrs[n]["osm_id"]`) are written with their real id, version and tags and no
  action, so JOSM loads the file alone (every way's nodes are in it) and sees them as unmodified.
- `.osc`: the same proposal as one `<create>` block (objects version 1); ways reference existing nodes by their
  real (positive) id, and those nodes are not created. Such a file is referentially complete only together with
  the OSM database it was conflated against.

Coordinates are WGS84 lon/lat with 7 decimals (~1 cm), converted from the graph's CRS with pyproj. Consecutive
vertices that fall on the same rounded position are written once. A way longer than 2000 nodes (the OSM API
limit) is cut into several ways sharing their end nodes (same tags). Files are written to a temporary name and
renamed into place.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from postprocess.geodesy import to_lonlat
from postprocess.roadgraph import RoadGraph

MAX_WAY_NODES = 2000
MAX_TAG_LEN = 255


@dataclass
class OsmNode:
    id: int
    lon: float
    lat: float
    version: int | None = None  # existing OSM nodes only
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def existing(self) -> bool:
        return self.id > 0


@dataclass
class OsmWay:
    id: int
    refs: list[int]
    tags: dict[str, str]
    edge_id: int


@dataclass
class OsmData:
    """The objects of a proposal, ready to write (nodes in writing order, then ways)."""

    nodes: list[OsmNode]
    ways: list[OsmWay]
    skipped_edges: list[int] = field(default_factory=list)  # edges that collapsed to a single position

    @property
    def existing_node_ids(self) -> list[int]:
        return [n.id for n in self.nodes if n.existing]


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def review_tags(attrs: dict, confidence: float, edge_id: int, highway: str) -> dict[str, str]:
    """The tags of the way of one edge."""
    tags = {"highway": highway, "roadmap:id": str(edge_id)}
    if confidence is not None and math.isfinite(float(confidence)):
        tags["roadmap:confidence"] = _fmt(float(confidence))
    gs = attrs.get("gps_support")
    if gs is not None and isinstance(gs, int | float | np.number) and math.isfinite(float(gs)):
        tags["roadmap:gps_support"] = _fmt(float(gs))
    conf = attrs.get("confirmed")
    if conf is not None:
        tags["roadmap:confirmed"] = "yes" if bool(conf) else "no"
    reason = attrs.get("reason")
    if reason and conf is not None and not bool(conf):
        tags["roadmap:reason"] = str(reason)[:MAX_TAG_LEN]
    return tags


def build_osm(graph: RoadGraph, highway: str = "road") -> OsmData:
    """Assign OSM ids to the graph's nodes and vertices and cut its edges into ways."""
    if not highway or any(ch in highway for ch in "<>&\"'\n"):
        raise ValueError(f"highway: not a usable tag value: {highway!r}")
    ids = list(graph.nodes)
    sizes = [len(e.coords) for e in graph.edges]
    pts = [np.array([graph.nodes[n] for n in ids], dtype=np.float64).reshape(-1, 2)]
    pts += [np.asarray(e.coords, dtype=np.float64).reshape(-1, 2) for e in graph.edges]
    allp = np.concatenate(pts) if pts else np.zeros((0, 2))
    lon, lat = to_lonlat(graph.crs_wkt, allp[:, 0], allp[:, 1]) if len(allp) else (np.zeros(0), np.zeros(0))
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise ValueError("some coordinates cannot be converted to WGS84 lon/lat")
    lon = np.round(lon, 7)
    lat = np.round(lat, 7)

    next_neg = 0

    def new_id() -> int:
        nonlocal next_neg
        next_neg -= 1
        return next_neg

    nodes: list[OsmNode] = []
    graph_node_osm: dict[int, int] = {}
    pos_of: dict[int, tuple[float, float]] = {}
    seen_existing: set[int] = set()
    for k, n in enumerate(ids):
        attrs = graph.node_attrs.get(n) or {}
        osm_id = attrs.get("osm_id")
        if osm_id is not None and int(osm_id) > 0:
            oid = int(osm_id)
            x = float(attrs["lon"]) if attrs.get("lon") is not None else float(lon[k])
            y = float(attrs["lat"]) if attrs.get("lat") is not None else float(lat[k])
            graph_node_osm[n] = oid
            pos_of[oid] = (round(x, 7), round(y, 7))
            if oid not in seen_existing:
                seen_existing.add(oid)
                ver = attrs.get("osm_version")
                tags = {str(a): str(b) for a, b in (attrs.get("tags") or {}).items()}
                nodes.append(OsmNode(oid, round(x, 7), round(y, 7), int(ver) if ver else None, tags))
        else:
            nid = new_id()
            graph_node_osm[n] = nid
            pos_of[nid] = (float(lon[k]), float(lat[k]))
            nodes.append(OsmNode(nid, float(lon[k]), float(lat[k])))

    ways: list[OsmWay] = []
    skipped: list[int] = []
    way_id = 0
    off = len(ids)
    for e, m in zip(graph.edges, sizes, strict=True):
        elon, elat = lon[off:off + m], lat[off:off + m]
        off += m
        refs = [graph_node_osm[e.u]]
        last = pos_of[refs[0]]
        for j in range(1, m - 1):
            p = (float(elon[j]), float(elat[j]))
            if p == last:
                continue
            nid = new_id()
            nodes.append(OsmNode(nid, p[0], p[1]))
            pos_of[nid] = p
            refs.append(nid)
            last = p
        end = graph_node_osm[e.v]
        if pos_of[end] == last and len(refs) > 1 and refs[-1] != refs[0]:
            refs.pop()  # the last interior vertex sits on the end node: keep the node (unused vertices go below)
        if refs[-1] != end:
            refs.append(end)
        if len(set(refs)) < 2 or (refs[0] == refs[-1] and len(set(refs)) < 3):
            skipped.append(e.id)
            continue
        tags = review_tags(e.attrs, e.confidence, e.id, highway)
        for chunk in _chunks(refs):
            way_id -= 1
            ways.append(OsmWay(way_id, chunk, dict(tags), e.id))
    used = {r for w in ways for r in w.refs}
    # osmium's order (what `osmium check-refs` expects): new ids -1, -2, ... then existing ids ascending
    nodes = sorted((n for n in nodes if n.id in used), key=lambda n: (n.id > 0, abs(n.id)))
    return OsmData(nodes, ways, skipped)


def _chunks(refs: list[int]) -> Iterator[list[int]]:
    if len(refs) <= MAX_WAY_NODES:
        yield refs
        return
    start = 0
    while start < len(refs) - 1:
        stop = min(len(refs), start + MAX_WAY_NODES)
        yield refs[start:stop]
        start = stop - 1


def _tag_lines(tags: dict[str, str], indent: str) -> list[str]:
    return [f"{indent}<tag k={quoteattr(k)} v={quoteattr(v)}/>\n" for k, v in tags.items()]


def osm_xml(data: OsmData, generator: str = "roadmap") -> Iterator[str]:
    """The JOSM .osm document, in pieces."""
    yield "<?xml version='1.0' encoding='UTF-8'?>\n"
    yield f"<osm version=\"0.6\" generator={quoteattr(generator)} upload=\"false\">\n"
    for n in data.nodes:
        ver = f" version=\"{n.version}\"" if (n.existing and n.version) else ""
        head = f"  <node id=\"{n.id}\"{ver} visible=\"true\" lat=\"{n.lat:.7f}\" lon=\"{n.lon:.7f}\""
        if n.tags:
            yield head + ">\n"
            yield from _tag_lines(n.tags, "    ")
            yield "  </node>\n"
        else:
            yield head + "/>\n"
    for w in data.ways:
        yield f"  <way id=\"{w.id}\" visible=\"true\">\n"
        for r in w.refs:
            yield f"    <nd ref=\"{r}\"/>\n"
        yield from _tag_lines(w.tags, "    ")
        yield "  </way>\n"
    yield "</osm>\n"


def osc_xml(data: OsmData, generator: str = "roadmap") -> Iterator[str]:
    """The osmChange document: one <create> of the new nodes and all ways (version 1)."""
    yield "<?xml version='1.0' encoding='UTF-8'?>\n"
    yield f"<osmChange version=\"0.6\" generator={quoteattr(generator)}>\n"
    yield "  <create>\n"
    for n in data.nodes:
        if n.existing:
            continue
        yield f"    <node id=\"{n.id}\" version=\"1\" lat=\"{n.lat:.7f}\" lon=\"{n.lon:.7f}\"/>\n"
    for w in data.ways:
        yield f"    <way id=\"{w.id}\" version=\"1\">\n"
        for r in w.refs:
            yield f"      <nd ref=\"{r}\"/>\n"
        yield from _tag_lines(w.tags, "      ")
        yield "    </way>\n"
    yield "  </create>\n"
    yield "</osmChange>\n"


def _atomic_write_lines(path: str | os.PathLike[str], pieces: Iterator[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            buf: list[str] = []
            for p in pieces:
                buf.append(p)
                if len(buf) >= 4096:
                    fh.write("".join(buf))
                    buf.clear()
            fh.write("".join(buf))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_osm(graph: RoadGraph, path: str | os.PathLike[str], highway: str = "road",
              data: OsmData | None = None) -> OsmData:
    """Write the JOSM file (atomically); returns the objects written."""
    data = data or build_osm(graph, highway)
    _atomic_write_lines(path, osm_xml(data))
    return data


def write_osc(graph: RoadGraph, path: str | os.PathLike[str], highway: str = "road",
              data: OsmData | None = None) -> OsmData:
    """Write the osmChange file (atomically); returns the objects written."""
    data = data or build_osm(graph, highway)
    _atomic_write_lines(path, osc_xml(data))
    return data
