"""predict: seamless tiled inference, streaming GeoTIFF output, resume, KDE baseline, input checks."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import from_origin
from torch import nn

from roadmap_cli.cli import main
from roadmap_cli.errors import RoadmapError
from roadmap_cli.grid import Grid
from roadmap_cli.imagery import ImageryReader, build_vrt
from roadmap_cli.inputs import default_normalisation, make_input
from roadmap_cli.predict import (
    TileLayout,
    forward_tta,
    predict_kde,
    predict_to_raster,
)
from roadmap_cli.rasterio_out import probability_to_uint8
from roadmap_cli.store import SAMPLE_DTYPE, PointStore, StoreWriter
from roadmap_cli.workdir import Workdir

DATA = Path(__file__).parent / "data"
RENDER = {"channels": ["density", "interval"], "mode": "gaussian", "kernel_size": 3, "sigma": None,
          "scale": "log", "binary_radius": 2, "density_norm": 4.0, "interval_norm": 60.0, "speed_norm": 30.0}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------------------
# fixtures: tiny workdirs written directly (grid.json, imagery.vrt, gps/)
# ----------------------------------------------------------------------------------------------------------------
def write_mosaic(path: Path, width: int, height: int, crs: str = "EPSG:32630", res: float = 0.5,
                 alpha_cols: int = 0, seed: int = 0) -> Path:
    """A smooth seeded RGB GeoTIFF; with alpha_cols > 0 a 4th alpha band hides the first columns."""
    rng = np.random.default_rng(seed)
    base = rng.random((3, height // 4 + 2, width // 4 + 2)).astype(np.float32)
    img = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)[:, :height, :width]
    img = (img * 200 + rng.integers(0, 40, img.shape)).clip(0, 255).astype(np.uint8)
    x0, y0 = (500000.0, 5900000.0) if crs != "EPSG:4326" else (-3.0, 53.4)
    count = 4 if alpha_cols else 3
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8", crs=crs,
                       transform=from_origin(x0, y0, res, res)) as ds:
        ds.write(img, [1, 2, 3])
        if alpha_cols:
            alpha = np.full((height, width), 255, np.uint8)
            alpha[:, :alpha_cols] = 0
            ds.write(alpha, 4)
            ds.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                              rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    return path


def write_store(wd: Workdir, width: int, height: int, n: int = 400, seed: int = 1,
                rows: tuple[float, float] | None = None) -> None:
    """GPS samples along a diagonal (and a horizontal road), optionally only within a row range."""
    rng = np.random.default_rng(seed)
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    t = rng.random(n)
    half = n // 2
    s["col"][:half] = t[:half] * (width - 1)
    s["row"][:half] = t[:half] * (height - 1)
    s["col"][half:] = t[half:] * (width - 1)
    s["row"][half:] = height * 0.4 + rng.normal(0, 0.7, n - half)
    s["row"] = np.clip(s["row"], 0, height - 1e-3)
    if rows is not None:
        s = s[(s["row"] >= rows[0]) & (s["row"] < rows[1])]
    s["time"] = np.arange(s.size) * 5.0
    s["interval"] = 5.0
    s["speed"] = np.nan
    s["bearing"] = np.nan
    with StoreWriter(wd.path("gps"), width, height, tile_size=64) as w:
        w.append(s)
        w.close(["v0"])


def make_workdir(tmp_path: Path, width: int = 300, height: int = 200, crs: str = "EPSG:32630", res: float = 0.5,
                 alpha_cols: int = 0, gps: bool = True, imagery: bool = True, name: str = "wd") -> Workdir:
    wd = Workdir(tmp_path / name)
    wd.ensure()
    if imagery:
        tif = write_mosaic(tmp_path / f"{name}_mosaic.tif", width, height, crs, res, alpha_cols)
        build_vrt([tif], wd.path("imagery"))
        Grid.from_raster(wd.path("imagery")).save(wd.path("grid"))
    else:
        Grid.create(crs, from_origin(500000.0, 5900000.0, res, res), width, height).save(wd.path("grid"))
    if gps:
        write_store(wd, width, height)
    return wd


def tiny_fcn(in_channels: int, seed: int = 0) -> nn.Module:
    """Three 3x3 convolutions (receptive field radius 3) with fixed random weights."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh(),
                        nn.Conv2d(6, 1, 3, padding=1))
    with torch.no_grad():
        net[-1].weight.mul_(3.0)
    return net.eval()


def meta_for(inputs: str, tile_size: int = 64) -> dict:
    n_gps = 2 if "gps" in inputs else 0
    return {"roadmap_version": "0.1.0", "architecture": "test", "decoder": "1d", "encoder_depth": None,
            "in_channels": (3 if "image" in inputs else 0) + n_gps, "inputs": inputs,
            "render": dict(RENDER) if n_gps else None, "normalisation": default_normalisation(),
            "tile_size": tile_size, "training": {}, "validation": {}}


def whole_image(model: nn.Module, meta: dict, wd: Workdir, tta: int = 1) -> np.ndarray:
    """The reference: one forward pass over the whole mosaic, encoded like prob.tif."""
    grid = wd.load_grid()
    rgb = valid = gps = None
    if "image" in meta["inputs"]:
        with ImageryReader(wd.path("imagery")) as r:
            rgb, valid = r.read(0, 0, grid.width, grid.height)
    if "gps" in meta["inputs"]:
        from roadmap_cli.render import RenderParams, render

        gps = render(PointStore(wd.path("gps")).all_samples(), 0, 0, grid.width, grid.height,
                     RenderParams.from_dict(meta["render"]))
    x = make_input(rgb, gps, meta["inputs"], meta["normalisation"])[None]
    return probability_to_uint8(forward_tta(model, x, tta, "cpu")[0], valid)


def read_prob(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(1), {"crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height,
                            "nodata": ds.nodata, "dtype": ds.dtypes[0], "blocks": ds.block_shapes[0],
                            "compress": ds.compression, "tags": ds.tags()}


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "tile", "overlap"), [(300, 64, 16), (64, 64, 16), (50, 64, 16), (1000, 256, 64),
                                                     (129, 64, 32), (200, 64, 0)])
def test_layout_covers_every_pixel_and_bands_partition_rows(n: int, tile: int, overlap: int) -> None:
    lay = TileLayout.build(n, n + 7, tile, overlap)
    sx, sy = lay.weight_sums()
    assert (sx > 0).all() and (sy > 0).all()
    assert lay.xs[0] == 0 and lay.xs[-1] + lay.tile_w == n
    rows = [lay.band_rows(k) for k in range(lay.n_bands)]
    assert rows[0][0] == 0 and rows[-1][1] == n + 7
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(rows, rows[1:], strict=False))
    # as few tiles as the stride allows, every overlap at least `overlap`
    gaps = np.diff(lay.xs)
    assert (gaps <= tile - overlap).all() and (gaps > 0).all()
    assert len(lay.xs) == (1 if n <= tile else -(-(n - tile) // (tile - overlap)) + 1)
    if n >= 3 * tile and overlap:  # equal overlaps: the interior weights sum to a constant
        inner = sx[lay.xs[1]:lay.xs[-1]]
        assert inner.min() >= 1.0 - 1e-6


def test_layout_rejects_bad_overlap() -> None:
    with pytest.raises(RoadmapError, match="--overlap"):
        TileLayout.build(100, 100, 64, 40)


@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_tta_views_are_undone(tta: int) -> None:
    """A per-pixel model is equivariant: every TTA view, undone, gives back sigmoid of its input."""
    x = np.random.default_rng(0).normal(size=(2, 3, 12, 20)).astype(np.float32)
    model = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0] = 1.0
    got = forward_tta(model, x, tta, "cpu")
    assert got.shape == (2, 12, 20)
    assert np.allclose(got, 1 / (1 + np.exp(-x[:, 0])), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# seamless tiling
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height", "tile", "overlap", "tta"),
                         [(300, 200, 64, 16, 1), (170, 290, 96, 32, 1), (150, 130, 64, 16, 8)])
def test_tiled_output_equals_whole_image(tmp_path: Path, width: int, height: int, tile: int, overlap: int,
                                         tta: int) -> None:
    wd = make_workdir(tmp_path, width, height, gps=False)
    meta = meta_for("image")
    model = tiny_fcn(3)
    stats = predict_to_raster(model, meta, wd, tile_size=tile, overlap=overlap, batch_size=3, tta=tta, workers=2)
    assert stats.windows > 4  # really tiled, windows that do not divide the mosaic
    got, prof = read_prob(wd.path("prob"))
    grid = wd.load_grid()
    assert (prof["width"], prof["height"]) == (grid.width, grid.height)
    assert tuple(prof["transform"])[:6] == grid.transform
    assert prof["crs"].to_epsg() == 32630
    assert prof["dtype"] == "uint8" and prof["nodata"] == 0
    assert prof["blocks"] == (512, 512) and prof["compress"].name.lower() == "deflate"
    ref = whole_image(model, meta, wd, tta)
    e = 4  # away from the mosaic's edges
    diff = np.abs(got.astype(int) - ref.astype(int))[e:-e, e:-e]
    assert diff.max() <= 1, diff.max()
    assert got.std() > 5  # not a constant raster


def test_seams_would_show_without_blending(tmp_path: Path) -> None:
    """Control: the tiny model's tile borders differ from the whole image, so the test above can fail."""
    wd = make_workdir(tmp_path, 200, 140, gps=False)
    model = tiny_fcn(3)
    ref = whole_image(model, meta_for("image"), wd)
    with ImageryReader(wd.path("imagery")) as r:
        rgb, valid = r.read(0, 0, 64, 64)
    tile = probability_to_uint8(forward_tta(model, make_input(rgb, None, "image")[None], 1, "cpu")[0], valid)
    assert np.abs(tile.astype(int) - ref[:64, :64].astype(int))[63].max() > 1


def test_fused_model_with_gps_equals_whole_image(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 260, 190)
    meta = meta_for("image+gps")
    model = tiny_fcn(5, seed=3)
    predict_to_raster(model, meta, wd, tile_size=64, overlap=32, batch_size=2)
    got, _ = read_prob(wd.path("prob"))
    ref = whole_image(model, meta, wd)
    assert np.abs(got.astype(int) - ref.astype(int))[8:-8, 8:-8].max() <= 1


def test_epsg4326_grid(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 180, 150, crs="EPSG:4326", res=1e-5, gps=False)
    meta = meta_for("image")
    model = tiny_fcn(3)
    predict_to_raster(model, meta, wd, tile_size=64, overlap=16)
    got, prof = read_prob(wd.path("prob"))
    assert prof["crs"].to_epsg() == 4326
    assert np.allclose(tuple(prof["transform"])[:6], wd.load_grid().transform)
    assert np.abs(got.astype(int) - whole_image(model, meta, wd).astype(int))[4:-4, 4:-4].max() <= 1


def test_nodata_outside_imagery(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 200, 120, alpha_cols=70, gps=False)
    predict_to_raster(tiny_fcn(3), meta_for("image"), wd, tile_size=64, overlap=16)
    got, prof = read_prob(wd.path("prob"))
    assert (got[:, :70] == 0).all()
    assert (got[:, 70:] >= 1).all()
    with rasterio.open(wd.path("prob")) as ds:
        mask = ds.read_masks(1)
    assert (mask[:, :70] == 0).all() and (mask[:, 70:] == 255).all()


# ----------------------------------------------------------------------------------------------------------------
# resume, re-runs, COG
# ----------------------------------------------------------------------------------------------------------------
class Killed(Exception):
    pass


def _kill_after(n: int):
    def hook(k: int) -> None:
        if k + 1 >= n:
            raise Killed(f"killed after band {k}")
    return hook


def test_killed_run_resumes_to_identical_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wd = make_workdir(tmp_path, 230, 250)
    meta = meta_for("image+gps")
    model = tiny_fcn(5, seed=2)
    kw = {"tile_size": 64, "overlap": 16, "batch_size": 2}
    full = tmp_path / "full.tif"
    s_full = predict_to_raster(model, meta, wd, full, **kw)
    assert s_full.bands_run >= 4

    out = tmp_path / "resumed.tif"
    with pytest.raises(Killed):
        predict_to_raster(model, meta, wd, out, band_hook=_kill_after(2), **kw)
    assert not out.exists()
    assert (tmp_path / "resumed.tif.partial" / "state.json").exists()
    with caplog.at_level(logging.WARNING, logger="roadmap"):
        s = predict_to_raster(model, meta, wd, out, **kw)
    assert s.bands_resumed == 2 and s.bands_run == s_full.bands_run - 2
    assert "resuming after 2" in caplog.text
    assert out.read_bytes() == full.read_bytes()
    assert not (tmp_path / "resumed.tif.partial").exists()


def test_changed_option_discards_partial_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wd = make_workdir(tmp_path, 200, 200, gps=False)
    meta = meta_for("image")
    model = tiny_fcn(3)
    with pytest.raises(Killed):
        predict_to_raster(model, meta, wd, tile_size=64, overlap=16, band_hook=_kill_after(1))
    with caplog.at_level(logging.WARNING, logger="roadmap"):
        s = predict_to_raster(model, meta, wd, tile_size=64, overlap=32)
    assert s.bands_resumed == 0
    assert "discarded" in caplog.text and "overlap" in caplog.text
    # different weights are a changed input too
    with pytest.raises(Killed):
        predict_to_raster(model, meta, wd, tile_size=64, overlap=16, overwrite=True, band_hook=_kill_after(1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="roadmap"):
        s = predict_to_raster(tiny_fcn(3, seed=9), meta, wd, tile_size=64, overlap=16, overwrite=True)
    assert s.bands_resumed == 0 and "model" in caplog.text


def test_rerun_is_up_to_date_and_foreign_file_needs_overwrite(tmp_path: Path, caplog) -> None:
    wd = make_workdir(tmp_path, 100, 90, gps=False)
    meta, model = meta_for("image"), tiny_fcn(3)
    predict_to_raster(model, meta, wd, tile_size=64, overlap=16)
    with caplog.at_level(logging.WARNING, logger="roadmap"):
        assert predict_to_raster(model, meta, wd, tile_size=64, overlap=16).skipped
    assert "up to date" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="roadmap"):
        s = predict_to_raster(model, meta, wd, tile_size=64, overlap=20)
    assert not s.skipped and "replacing" in caplog.text
    foreign = tmp_path / "foreign.tif"
    shutil.copy(tmp_path / "wd_mosaic.tif", foreign)
    with pytest.raises(RoadmapError, match="--overwrite"):
        predict_to_raster(model, meta, wd, foreign, tile_size=64, overlap=16)
    predict_to_raster(model, meta, wd, foreign, tile_size=64, overlap=16, overwrite=True)
    assert read_prob(foreign)[1]["dtype"] == "uint8"


def test_cog_output(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 140, 100, gps=False)
    predict_to_raster(tiny_fcn(3), meta_for("image"), wd, tile_size=64, overlap=16)
    plain, _ = read_prob(wd.path("prob"))
    out = tmp_path / "cog.tif"
    predict_to_raster(tiny_fcn(3), meta_for("image"), wd, out, tile_size=64, overlap=16, cog=True)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.nodata == 0
        assert (ds.read(1) == plain).all()


# ----------------------------------------------------------------------------------------------------------------
# inputs: missing imagery / GPS, sparse GPS
# ----------------------------------------------------------------------------------------------------------------
def test_image_model_on_gps_only_workdir_is_one_line_error(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 100, 100, imagery=False)
    with pytest.raises(RoadmapError, match="needs imagery") as exc:
        predict_to_raster(tiny_fcn(5), meta_for("image+gps"), wd, tile_size=64, overlap=16)
    assert "\n" not in exc.value.format_message()


def test_gps_model_without_store_is_one_line_error(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 100, 100, gps=False)
    with pytest.raises(RoadmapError, match="needs GPS") as exc:
        predict_to_raster(tiny_fcn(5), meta_for("image+gps"), wd, tile_size=64, overlap=16)
    assert "\n" not in exc.value.format_message()
    # an image+gps model can be run from imagery alone on request, not from GPS alone
    stats = predict_to_raster(tiny_fcn(5), meta_for("image+gps"), wd, tile_size=64, overlap=16, inputs="image")
    assert stats.windows > 0 and wd.path("prob").exists()
    with pytest.raises(RoadmapError, match="--inputs gps"):
        predict_to_raster(tiny_fcn(5), meta_for("image+gps"), wd, tile_size=64, overlap=16, inputs="gps")


def test_sparse_gps_warns_once_with_fraction(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wd = make_workdir(tmp_path, 200, 200, gps=False)
    write_store(wd, 200, 200, rows=(0, 40))  # GPS only in the top rows
    with caplog.at_level(logging.WARNING, logger="roadmap"):
        stats = predict_to_raster(tiny_fcn(5), meta_for("image+gps"), wd, tile_size=64, overlap=16)
    gps_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GPS:")]
    assert len(gps_lines) == 1
    assert stats.windows_without_gps > 0 and stats.windows_without_gps < stats.gps_windows
    assert f"{stats.windows_without_gps} of {stats.gps_windows} windows" in gps_lines[0]
    assert "km²" in gps_lines[0]


# ----------------------------------------------------------------------------------------------------------------
# KDE baseline and the command line
# ----------------------------------------------------------------------------------------------------------------
def test_kde_windows_equal_one_window(tmp_path: Path) -> None:
    """KDE per window with the kernel's margin is exact: small windows give the same raster as one big one."""
    wd = make_workdir(tmp_path, 150, 130, imagery=False)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    predict_kde(wd, a, kernel_size=7, window=32, reference=3.0)
    predict_kde(wd, b, kernel_size=7, window=1024, reference=3.0)
    ra, rb = read_prob(a)[0], read_prob(b)[0]
    assert (ra == rb).all()
    assert ra.max() > 100 and (ra >= 1).all()


def test_kde_resume_identical(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path, 150, 130, imagery=False)
    full, out = tmp_path / "full.tif", tmp_path / "out.tif"
    predict_kde(wd, full, window=32)
    with pytest.raises(Killed):
        predict_kde(wd, out, window=32, band_hook=_kill_after(2))
    assert predict_kde(wd, out, window=32).bands_resumed == 2
    assert out.read_bytes() == full.read_bytes()


def test_cli_kde_on_liverpool_bus_gps(tmp_path: Path) -> None:
    """Real bus fixes: ingest without imagery, predict --method kde, probability high along the route."""
    csv = DATA / "liverpool_bus" / "route14_outbound.csv"
    wd = tmp_path / "lpool"
    runner = CliRunner()
    # fixes 20-30 s apart: an 8 m grid and a 15-pixel kernel join them into a route
    res = runner.invoke(main, ["-w", str(wd), "ingest", "--gps", str(csv), "--resolution", "8",
                               "predict", "--method", "kde", "--kernel-size", "15", "--kde-reference", "0.5"])
    assert res.exit_code == 0, res.output
    prob, prof = read_prob(wd / "prob.tif")
    grid = Workdir(wd).load_grid()
    assert (prof["width"], prof["height"]) == (grid.width, grid.height)
    samples = PointStore(wd / "gps").all_samples()
    on = prob[samples["row"].astype(int), samples["col"].astype(int)]
    rng = np.random.default_rng(0)
    off = prob[rng.integers(0, grid.height, 5000), rng.integers(0, grid.width, 5000)]
    assert np.median(on) > 100 and np.percentile(on, 10) > 40
    assert np.median(off) <= 2 and (prob > 128).mean() < 0.01  # high along the route only
    assert prof["nodata"] == 0 and (prob >= 1).all()  # GPS-only: every pixel has a value


def test_cli_predict_with_registry_checkpoint(tmp_path: Path) -> None:
    from models import build_model
    from roadmap_cli.checkpoint import save_checkpoint

    wd = make_workdir(tmp_path, 150, 100, gps=False)
    torch.manual_seed(0)
    net = build_model("linknet18", 3, "1d")
    meta = meta_for("image", tile_size=64)
    meta.update(architecture="linknet18", encoder_depth=18)
    save_checkpoint(wd.path("model"), net, meta)
    runner = CliRunner()
    args = ["-w", str(wd.root), "predict", "--tile-size", "64", "--overlap", "16", "--batch-size", "2",
            "--device", "cpu"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    prob, prof = read_prob(wd.path("prob"))
    assert prob.shape == (100, 150) and (prob >= 1).all()
    res = runner.invoke(main, ["-w", str(wd.root), "predict", "--model", str(tmp_path / "nope.pt")])
    assert res.exit_code == 1 and "nope.pt" in res.output and "Traceback" not in res.output
