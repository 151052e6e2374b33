"""Rebuild the derived files of sample_data/ from image.tif and roads.geojson (see README.md).

    python sample_data/make_sample_data.py                      # labels.tif and existing.osm
    python sample_data/make_sample_data.py --source DIR         # also re-copy image.tif / roads.geojson from DIR

- image.tif: the SpaceNet tile recompressed losslessly (DEFLATE, predictor 2, 256 px tiles; same pixels).
- labels.tif: road area made by buffering roads.geojson by lane_number x 3.5 m on the image grid.
- existing.osm: an OSM XML extract holding SOME of the tile's roads (every arterial, about half of the other
  roads, chosen with a fixed seed), the way a conflation run meets an existing map: positive ids, versions,
  shared junction nodes, geometry a metre or so off the labelled centrelines.
gps.csv is made with `roadmap simulate` (the command is in README.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

HERE = Path(__file__).resolve().parent
SPACENET_HIGHWAY = {1: "motorway", 2: "primary", 3: "secondary", 4: "tertiary", 5: "residential",
                    6: "unclassified", 7: "track"}


def copy_source(source: Path) -> None:
    """Recompress the tile losslessly into sample_data/image.tif and copy roads.geojson unchanged."""
    import rasterio

    with rasterio.open(source / "image.tif") as src:
        data = src.read()
        profile = src.profile
        interp = src.colorinterp
    profile.update(compress="deflate", predictor=2, zlevel=9, tiled=True, blockxsize=256, blockysize=256)
    tmp = HERE / ".image.tif.tmp"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = interp
    with rasterio.open(tmp) as chk:
        assert (chk.read() == data).all(), "recompression changed pixels"
    tmp.replace(HERE / "image.tif")
    shutil.copyfile(source / "roads.geojson", HERE / "roads.geojson")


def make_labels() -> None:
    """labels.tif: roads.geojson buffered by lane_number x 3.5 m, rasterised on the image grid."""
    from roadmap_cli.grid import Grid
    from roadmap_cli.labels import rasterize_roads, read_road_vectors, write_mask

    grid = Grid.from_raster(HERE / "image.tif")
    mask = rasterize_roads(read_road_vectors(HERE / "roads.geojson"), grid, lane_width=3.5)
    write_mask(HERE / "labels.tif", mask, grid, overwrite=True)


def make_existing_osm(seed: int = 0, keep_minor: float = 0.5, jitter_m: float = 0.7) -> None:
    """existing.osm: some of the roads as OSM ways with positive ids, versions and shared junction nodes."""
    import shapely
    from pyproj import Transformer

    from roadmap_cli.labels import read_road_vectors
    from roadmap_cli.workdir import atomic_write_text

    rng = np.random.default_rng(seed)
    roads = read_road_vectors(HERE / "roads.geojson").sort_values("road_id").reset_index(drop=True)
    rtype = roads["road_type"].astype(int).to_numpy()
    keep = (rtype <= 4) | (rng.random(len(roads)) < keep_minor)
    roads = roads[keep].reset_index(drop=True)
    utm = roads.estimate_utm_crs()
    to_m = Transformer.from_crs("EPSG:4326", utm, always_xy=True)
    to_deg = Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
    lines = [np.column_stack(to_m.transform(*np.asarray(g.coords)[:, :2].T)) for g in roads.geometry]
    # T-junctions: an end lying on another way becomes a vertex of that way (OSM ways share junction nodes).
    geoms = [shapely.LineString(c) for c in lines]
    for i, c in enumerate(lines):
        for end in (c[0], c[-1]):
            p = shapely.Point(end)
            for j, g in enumerate(geoms):
                if j == i or g.distance(p) > 0.5:
                    continue
                cj = lines[j]
                if np.min(np.hypot(*(cj - end).T)) < 0.5:
                    continue  # already a shared vertex
                s = g.project(p)
                cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(cj, axis=0).T))])
                k = int(np.searchsorted(cum, s))
                lines[j] = np.insert(cj, k, end, axis=0)
                geoms[j] = shapely.LineString(lines[j])
    # Nodes: one per distinct position (junctions shared), each moved a little like a hand-mapped node.
    node_id: dict[tuple[int, int], int] = {}
    node_xy: list[np.ndarray] = []
    ways: list[list[int]] = []
    for c in lines:
        refs = []
        for pt in c:
            key = (int(round(pt[0] * 10)), int(round(pt[1] * 10)))  # 0.1 m
            if key not in node_id:
                node_id[key] = 100_000_001 + len(node_xy)
                node_xy.append(pt + rng.normal(0.0, jitter_m, 2))
            if not refs or refs[-1] != node_id[key]:
                refs.append(node_id[key])
        ways.append(refs)
    xy = np.array(node_xy)
    lon, lat = to_deg.transform(xy[:, 0], xy[:, 1])
    lines_out = ['<?xml version="1.0" encoding="UTF-8"?>',
                 '<osm version="0.6" generator="roadmap sample_data/make_sample_data.py">',
                 f'  <bounds minlat="{lat.min():.7f}" minlon="{lon.min():.7f}" maxlat="{lat.max():.7f}" '
                 f'maxlon="{lon.max():.7f}"/>']
    stamp = "2023-06-01T12:00:00Z"
    for k in range(len(xy)):
        ver = int(rng.integers(1, 4))
        lines_out.append(f'  <node id="{100_000_001 + k}" visible="true" version="{ver}" changeset="{136000000 + k}" '
                         f'timestamp="{stamp}" lat="{lat[k]:.7f}" lon="{lon[k]:.7f}"/>')
    for w, (refs, (_, row)) in enumerate(zip(ways, roads.iterrows(), strict=True)):
        ver = int(rng.integers(1, 7))
        lines_out.append(f'  <way id="{200_000_001 + w}" visible="true" version="{ver}" '
                         f'changeset="{137000000 + w}" timestamp="{stamp}">')
        lines_out += [f'    <nd ref="{r}"/>' for r in refs]
        tags = {"highway": SPACENET_HIGHWAY.get(int(row["road_type"]), "road"),
                "lanes": str(int(float(row["lane_number"]))),
                "maxspeed": f"{int(row['speed_mph'])} mph",
                "surface": "asphalt" if str(row.get("paved", "1")) == "1" else "unpaved"}
        lines_out += [f"    <tag k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in tags.items()]
        lines_out.append("  </way>")
    lines_out.append("</osm>")
    atomic_write_text(HERE / "existing.osm", "\n".join(lines_out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=None,
                    help="Folder with the original image.tif and roads.geojson to copy in first.")
    args = ap.parse_args()
    if args.source is not None:
        copy_source(args.source)
    make_labels()
    make_existing_osm()


if __name__ == "__main__":
    main()
