"""End to end through the CLI: synth -> ingest -> train (tiny) -> predict -> vectorize -> evaluate.

Every output is parsed: grid.json, ingest_report.json, model.pt (weights_only), prob.tif, roads.gpkg, roads.osm,
roads.osc, verification.csv/.geojson, report.html, metrics.json.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner

from roadmap_cli.cli import main


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    out = tmp_path_factory.mktemp("city")
    res = CliRunner().invoke(main, ["synth", "--out", str(out), "--size", "256", "--seed", "3", "--vehicles", "40",
                                    "--hours", "1"])
    assert res.exit_code == 0, res.output
    return out


def test_chained_pipeline_parses_every_output(city, tmp_path):
    import torch

    torch.set_num_threads(2)
    wd = tmp_path / "work"
    args = [
        "-q", "-w", str(wd),
        "ingest", "--gps", str(city / "gps.csv"), "--imagery", str(city / "image.tif"),
        "train", "--labels", str(city / "labels.tif"), "--model", "linknet34", "--encoder-depth", "18",
        "--tile-size", "64", "--batch-size", "2", "--steps", "2", "--device", "cpu", "--seed", "1",
        "predict", "--tile-size", "128", "--device", "cpu",
        "vectorize", "--threshold", "0.5",
        "evaluate", "--truth", str(city / "labels.tif"), "--truth-graph", str(city / "roads.geojson"),
    ]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output

    grid = json.loads((wd / "grid.json").read_text())
    assert grid["width"] == 256 and grid["height"] == 256
    report = json.loads((wd / "ingest_report.json").read_text())
    assert report["rows_kept"] > 0 and report["rows_read"] >= report["rows_kept"]

    ckpt = torch.load(wd / "model.pt", map_location="cpu", weights_only=True)
    json.dumps(ckpt["meta"])  # metadata is plain JSON-able data
    assert ckpt["meta"]["inputs"] == "image+gps"

    import rasterio

    with rasterio.open(wd / "prob.tif") as ds:
        assert (ds.width, ds.height, ds.dtypes[0]) == (256, 256, "uint8")
        assert ds.crs is not None
        prob = ds.read(1)
        assert prob.shape == (256, 256)

    import pyogrio

    layers = {name for name, _ in pyogrio.list_layers(wd / "roads.gpkg")}
    assert {"roads", "nodes"} <= layers
    roads = pyogrio.read_dataframe(wd / "roads.gpkg", layer="roads")
    for col in ("id", "length_m", "gps_support", "confirmed", "confidence"):
        assert col in roads.columns

    osm = ET.parse(wd / "roads.osm").getroot()
    assert osm.tag == "osm" and osm.get("upload") == "false"
    osc = ET.parse(wd / "roads.osc").getroot()
    assert osc.tag == "osmChange"
    n_ways = len(osm.findall("way"))
    assert n_ways == len(roads)

    with open(wd / "verification.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(roads)
    gj = json.loads((wd / "verification.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(roads)
    html = (wd / "report.html").read_text()
    assert "<html" in html.lower()

    metrics = json.loads((wd / "metrics.json").read_text())
    assert 0.0 <= (metrics["iou_global"] or 0.0) <= 1.0
    assert np.isfinite(metrics["pixels"]["tp"])
