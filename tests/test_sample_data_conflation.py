"""Issue 8 on the shipped sample data: vectorize the Vegas labels against sample_data/existing.osm with GPS
simulated along only some of the roads that OSM lacks."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner

from roadmap_cli.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def _existing_ways(path: Path) -> tuple[list, set[int]]:
    root = ET.parse(path).getroot()
    nodes = {int(n.get("id")): (float(n.get("lon")), float(n.get("lat"))) for n in root.findall("node")}
    lines = []
    for w in root.findall("way"):
        refs = [int(nd.get("ref")) for nd in w.findall("nd")]
        lines.append(shapely.LineString([nodes[r] for r in refs]))
    return lines, set(nodes)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vegas")
    utm = "EPSG:32611"
    existing, existing_ids = _existing_ways(SAMPLE / "existing.osm")
    existing_m = gpd.GeoSeries(existing, crs="EPSG:4326").to_crs(utm)
    existing_union = existing_m.union_all()
    roads = gpd.read_file(SAMPLE / "roads.geojson")
    roads_m = roads.to_crs(utm)
    # roads OSM lacks: less than a fifth of their length within 5 m of an existing way
    share = np.array([g.intersection(existing_union.buffer(5)).length / g.length for g in roads_m.geometry])
    new = roads_m[share < 0.2]
    assert len(new) >= 6
    # GPS along every other one of the longest new roads only
    new = new.assign(length=new.length).sort_values("length", ascending=False)
    driven = new.iloc[0:8:2]
    driven.to_crs("EPSG:4326").to_file(tmp / "driven.geojson", driver="GeoJSON")
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", "--roads", str(tmp / "driven.geojson"), "--out", str(tmp / "gps.csv"),
                               "--vehicles", "200", "--hours", "4", "--seed", "0", "--stands", "0",
                               "--outlier-rate", "0", "--closed-fraction", "0"])
    assert res.exit_code == 0, res.output
    wd = tmp / "work"
    res = runner.invoke(main, ["-q", "-w", str(wd), "ingest", "--gps", str(tmp / "gps.csv"), "--imagery",
                               str(SAMPLE / "image.tif"),
                               "vectorize", "--mask", str(SAMPLE / "labels.tif"), "--existing-osm",
                               str(SAMPLE / "existing.osm")])
    assert res.exit_code == 0, res.output
    return {"wd": wd, "existing_union": existing_union, "existing_lines": list(existing_m),
            "existing_ids": existing_ids, "driven": driven,
            "new": new, "utm": utm}


def _proposed(wd: Path, utm: str) -> gpd.GeoDataFrame:
    return gpd.read_file(wd / "roads.gpkg", layer="roads").to_crs(utm)


def _heading(line: shapely.LineString, d: float) -> float:
    a, b = line.interpolate(max(0.0, d - 1.0)), line.interpolate(min(line.length, d + 1.0))
    return float(np.degrees(np.arctan2(b.y - a.y, b.x - a.x))) % 180.0


def _duplicate_share(g: shapely.LineString, existing: list, radius: float = 8.0, angle: float = 30.0) -> float:
    """Share of a line's length lying within `radius` m of an existing way running the same way (either sense)."""
    ds = np.arange(0.5, g.length, 1.0)
    hits = 0
    for d in ds:
        p = g.interpolate(d)
        h = _heading(g, d)
        for e in existing:
            if e.distance(p) <= radius:
                diff = abs(h - _heading(e, e.project(p))) % 180.0
                if min(diff, 180.0 - diff) <= angle:
                    hits += 1
                    break
    return hits / max(1, len(ds))


def test_roads_already_in_osm_are_not_proposed_again(run):
    roads = _proposed(run["wd"], run["utm"])
    assert len(roads) > 0
    existing = list(run["existing_lines"])
    # the conflation rule drops a segment with 70 % of its length within 8 m of an OSM way of the same heading;
    # short connectors across a mapped road (between its carriageways, say) are new and stay
    shares = np.array([_duplicate_share(g, existing) for g in roads.geometry])
    assert (shares < 0.7).all(), shares.max()
    # and the roads OSM lacks are still proposed (less the stretches cut where they meet mapped roads)
    proposed_union = roads.geometry.union_all().buffer(8)
    for g in run["new"].geometry:
        assert g.intersection(proposed_union).length / g.length > 0.6


def test_new_roads_touching_osm_end_on_its_nodes(run):
    osc = ET.parse(run["wd"] / "roads.osc").getroot()
    refs = {int(nd.get("ref")) for nd in osc.iter("nd")}
    existing_refs = {r for r in refs if r > 0}
    assert existing_refs, "no proposed way ends on an existing OSM node"
    assert existing_refs <= run["existing_ids"]
    created = {int(n.get("id")) for n in osc.iter("node")}
    assert not (created & existing_refs)  # existing nodes are referenced, not created again
    osm = ET.parse(run["wd"] / "roads.osm").getroot()
    in_osm = {int(n.get("id")): n.get("version") for n in osm.findall("node") if int(n.get("id")) > 0}
    assert existing_refs <= set(in_osm)
    assert all(v is not None for v in in_osm.values())


def test_gps_confirms_only_the_driven_roads_and_the_report_lists_the_rest(run):
    wd = run["wd"]
    with open(wd / "verification.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    roads = _proposed(wd, run["utm"]).set_index("id")
    driven = run["driven"].geometry.union_all().buffer(15)
    confirmed = [int(r["id"]) for r in rows if r["confirmed"].lower() in ("true", "1", "yes")]
    unconfirmed = [int(r["id"]) for r in rows if r["confirmed"].lower() in ("false", "0", "no")]
    assert confirmed and unconfirmed
    # confirmed length lies along the driven roads (measured 0.75: one 136 m segment prolonging a driven road is
    # confirmed by fixes spilling past that road's end, a known weakness noted in the closing note)
    conf = roads.loc[confirmed].geometry
    along = sum(g.intersection(driven).length for g in conf) / sum(g.length for g in conf)
    print(f"confirmed length along driven roads: {along:.2f}")
    assert along > 0.7, along
    far = driven.buffer(40)
    for i, g in roads.geometry.items():  # segments far from any driven road are never confirmed
        if not g.intersects(far):
            assert i in unconfirmed
    # most of each driven road's proposed length is confirmed
    confirmed_union = roads.loc[confirmed].geometry.union_all().buffer(10)
    for g in run["driven"].geometry:
        assert g.intersection(confirmed_union).length / g.length > 0.6
    from test_report import parse

    page, _ = parse(wd / "report.html")
    assert sorted(page.rows["unconfirmed"]) == sorted(unconfirmed)
