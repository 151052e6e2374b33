"""report.html: lists exactly the unconfirmed segments, is self-contained, and renders in headless Chromium."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from gps_sim import X0, Y0
from test_verify import EXISTING, run

from postprocess.conflate import ConflationSummary
from postprocess.report import COLOURS, write_report
from postprocess.verify import NO_STORE_REASON, mark_unverified, verification_rows

JOSM_PREFIX = "http://127.0.0.1:8111/load_and_zoom?"


class _Page(HTMLParser):
    """Collects table rows by class, every src/href, and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[int]] = {}
        self.links: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr" and "data-edge-id" in a:
            self.rows.setdefault(a.get("class", ""), []).append(int(a["data-edge-id"]))
        for k in ("src", "href", "srcset", "data", "poster", "action"):
            if k in a and a[k] is not None:
                self.refs.append((tag, k, a[k]))
        if tag == "a" and "href" in a:
            self.links.append(a["href"])

    def handle_data(self, data):
        self.text.append(data)


def parse(path) -> tuple[_Page, str]:
    text = path.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    return p, text


def assert_self_contained(page: _Page, text: str) -> None:
    for tag, attr, val in page.refs:
        if val.startswith("data:image/png;base64,"):
            continue
        assert val.startswith(JOSM_PREFIX), f"<{tag} {attr}={val[:80]!r}>: not self-contained"
    assert "url(" not in text and "@import" not in text and "<script" not in text and "<link" not in text


@pytest.fixture()
def verified():
    graph, summary = run(False)
    return graph, summary


def thumbnail():
    """A 200 x 300 test picture covering the scenario, and its transform (2 m pixels)."""
    yy, xx = np.mgrid[0:300, 0:200]
    rgb = np.stack([(xx * 255 // 200), (yy * 255 // 300), np.full_like(xx, 120)], axis=-1).astype(np.uint8)
    return rgb, (6.0, 0.0, X0 - 100.0, 0.0, -6.0, Y0 + 1600.0)


def test_report_lists_exactly_the_unconfirmed(tmp_path, verified):
    graph, vsum = verified
    csum = ConflationSummary(n_existing_ways=1, n_proposed=12, length_proposed_m=4000.0, n_duplicates=3,
                             length_duplicates_m=980.0, n_kept=len(graph.edges), length_kept_m=graph.total_length_m)
    rgb, tr = thumbnail()
    existing = [np.array(EXISTING, dtype=float) + [X0, Y0]]
    out = write_report(tmp_path / "report.html", graph, csum, vsum, rgb, tr, existing_lines=existing,
                       info={"mask": "prob.tif", "threshold": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary left behind
    page, text = parse(out)
    unconfirmed = {e.id for e in graph.edges if e.attrs["confirmed"] is False}
    assert len(unconfirmed) >= 3
    assert sorted(page.rows["unconfirmed"]) == sorted(unconfirmed)
    assert set(page.rows) == {"unconfirmed"}
    # longest first
    lengths = {e.id: e.length_m for e in graph.edges}
    listed = [lengths[i] for i in page.rows["unconfirmed"]]
    assert listed == sorted(listed, reverse=True)
    assert "not-verified" not in page.ids
    body = " ".join(page.text)
    for label in ("Dropped: already in OSM", "Confirmed by GPS", "Unconfirmed", "Proposed by the model"):
        assert label in body
    assert "no GPS samples within 15 m" in body and "980 m" in body
    # one JOSM link per unconfirmed segment, zooming to a box around it
    rows = {r["id"]: r for r in verification_rows(graph)}
    assert len(page.links) == len(unconfirmed)
    for eid, link in zip(page.rows["unconfirmed"], page.links, strict=True):
        q = {k: float(v[0]) for k, v in parse_qs(urlparse(link).query).items()}
        assert set(q) == {"left", "right", "top", "bottom"}
        r = rows[eid]
        assert q["left"] < r["mid_lon"] < q["right"] and q["bottom"] < r["mid_lat"] < q["top"]
    # the map is an inline PNG
    imgs = [v for _, k, v in page.refs if k == "src"]
    assert len(imgs) == 1
    png = base64.b64decode(imgs[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert_self_contained(page, text)


def test_report_without_verification(tmp_path):
    graph, _ = run(False)
    summary = mark_unverified(graph)
    out = write_report(tmp_path / "report.html", graph, None, summary)
    page, text = parse(out)
    assert "not-verified" in page.ids
    assert NO_STORE_REASON in text and "GPS verification was not done" in text
    assert text.index("GPS verification was not done") < text.index("<h2>")  # on top, before everything else
    assert sorted(page.rows["unverified"]) == sorted(e.id for e in graph.edges)
    assert "unconfirmed" not in page.rows
    assert_self_contained(page, text)


def test_report_geographic_and_empty(tmp_path):
    graph, summary = run(True)
    page, text = parse(write_report(tmp_path / "a.html", graph, None, summary))
    assert sorted(page.rows["unconfirmed"]) == sorted(e.id for e in graph.edges if e.attrs["confirmed"] is False)
    graph.edges.clear()
    page, text = parse(write_report(tmp_path / "b.html", graph, None, None))
    assert "not-verified" in page.ids and page.rows == {}


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless rendering check needs Debian's `chromium` on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path, verified):
    graph, vsum = verified
    rgb, tr = thumbnail()
    out = write_report(tmp_path / "report.html", graph, None, vsum, rgb, tr,
                       existing_lines=[np.array(EXISTING, dtype=float) + [X0, Y0]])
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           f"--screenshot={shot}", "--window-size=1200,1600", out.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] == 1600 and img.shape[1] == 1200
    assert float(img[..., :3].std()) > 0.05  # not a blank page
    # the inline map picture was decoded and drawn: the segment colours are on screen
    rgb255 = img[..., :3] * (255.0 if img.dtype.kind == "f" else 1.0)
    for colour in (COLOURS["confirmed"], COLOURS["unconfirmed"]):
        want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
        close = np.abs(rgb255 - want).max(axis=-1) < 40
        assert close.sum() > 200, f"{colour} not found in the screenshot"
    keep = os.environ.get("ROADMAP_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_read_thumbnail(tmp_path):
    import rasterio

    from postprocess.report import read_thumbnail

    rgb, tr = thumbnail()
    path = tmp_path / "img.tif"
    with rasterio.open(path, "w", driver="GTiff", width=200, height=300, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=rasterio.Affine(*tr)) as ds:
        ds.write(np.moveaxis(rgb, -1, 0).astype(np.uint16) * 40)
    pic, ptr = read_thumbnail(path, max_px=100)
    assert pic.shape == (100, 67, 3) and pic.dtype == np.uint8
    assert ptr[0] == pytest.approx(6.0 * 200 / 67) and ptr[4] == pytest.approx(-6.0 * 300 / 100)
    assert ptr[2] == tr[2] and ptr[5] == tr[5]
    assert pic[..., 0].std() > 10  # stretched from 16 bit, not flat
    assert read_thumbnail(tmp_path / "missing.tif") == (None, None)
    assert read_thumbnail(path, max_source_pixels=100) == (None, None)
