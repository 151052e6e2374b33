"""--scheduler: predict and vectorize on a Dask LocalCluster of 2 worker processes give the in-process outputs.

One cluster (2 single-thread worker processes on loopback) serves the whole module: starting one costs seconds.
The in-process runs use one torch thread, as the workers do (the network's float sums depend on the thread count,
and the output must be byte for byte the same).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import Affine
from test_predict import _one_thread, make_workdir, meta_for  # noqa: F401 - autouse: one torch thread, as the workers
from test_vectorize import T05, UTM, _seam_mask, assert_same_graph

from roadmap_cli.cli import main
from roadmap_cli.cluster import open_cluster, parse_local
from roadmap_cli.errors import RoadmapError
from roadmap_cli.predict import predict_kde, predict_to_raster
from roadmap_cli.vectorize import VectorizeOptions, run_vectorize
from roadmap_cli.workdir import Workdir

distributed = pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")


@pytest.fixture(scope="module")
def cluster():
    with open_cluster("local:2") as c:
        yield c


def _registry_checkpoint(wd: Workdir, inputs: str = "image+gps", seed: int = 0) -> Path:
    from models import build_model
    from roadmap_cli.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    meta = meta_for(inputs, tile_size=64)
    net = build_model("linknet18", meta["in_channels"], "1d", image_channels=3 if "image" in inputs else 0)
    meta.update(architecture="linknet18", encoder_depth=18)
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    with torch.no_grad():  # a random network's output hovers at 0.5; spread it so that the bytes say something
        last.weight.mul_(40.0)
    path = wd.root / f"model_{seed}.pt"
    save_checkpoint(path, net, meta)
    return path


# ---- the cluster helper --------------------------------------------------------------------------------------------
def test_local_addresses():
    assert parse_local("local") == 0 and parse_local("LOCAL:3") == 3 and parse_local("tcp://10.0.0.1:8786") is None
    for bad in ("local:0", "local:x"):
        with pytest.raises(RoadmapError, match="local:N"):
            parse_local(bad)


def test_map_ordered_keeps_order_and_bounds_in_flight(cluster):
    import operator

    items = list(range(23))
    out = list(cluster.map_ordered(operator.mul, items, 3, in_flight=3))
    assert out == [3 * i for i in items]
    assert cluster.n_workers == 2 and cluster.n_threads == 2


def test_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    import roadmap_cli.cluster as rc

    monkeypatch.setattr(rc, "CONNECT_TIMEOUT_S", 2)
    wd = make_workdir(tmp_path, 80, 60)
    res = CliRunner().invoke(main, ["-w", str(wd.root), "predict", "--method", "kde", "--scheduler",
                                    "tcp://127.0.0.1:9"])
    assert res.exit_code == 1, res.output
    assert "--scheduler tcp://127.0.0.1:9: cannot connect" in res.output and "Traceback" not in res.output


# ---- predict -------------------------------------------------------------------------------------------------------
def test_predict_on_cluster_is_byte_identical(tmp_path, cluster):
    """Several bands, several tasks per band, a last partial batch: the same prob.tif bytes as in-process."""
    assert torch.get_num_threads() == 1  # the in-process side computes as the single-thread workers do
    wd = make_workdir(tmp_path, 300, 200)
    ckpt = _registry_checkpoint(wd)
    from roadmap_cli.checkpoint import build_from_checkpoint

    model, meta = build_from_checkpoint(ckpt, "cpu")
    local = tmp_path / "local.tif"
    remote = tmp_path / "remote.tif"
    opts = dict(tile_size=64, overlap=16, batch_size=2, tta=2, device="cpu")
    st_local = predict_to_raster(model, meta, wd, local, **opts)
    st_remote = predict_to_raster(model, meta, wd, remote, cluster=cluster, checkpoint=ckpt, worker_device="cpu",
                                  windows_per_task=4, **opts)
    assert st_local.windows == st_remote.windows == 24  # 6 x 4 windows
    assert st_remote.gps_windows == st_local.gps_windows
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        pa, pb = a.read(1), b.read(1)
        assert a.profile == b.profile
    assert pa.std() > 1  # a real picture, not a constant
    np.testing.assert_array_equal(pa, pb)


def test_predict_cli_on_cluster_address_resumes_identically(tmp_path, cluster):
    """Through the CLI with a scheduler address; a run killed after one band resumes to the same bytes."""
    wd = make_workdir(tmp_path, 200, 150)
    ckpt = _registry_checkpoint(wd, seed=1)
    from roadmap_cli.checkpoint import build_from_checkpoint

    model, meta = build_from_checkpoint(ckpt, "cpu")
    ref = tmp_path / "ref.tif"
    predict_to_raster(model, meta, wd, ref, tile_size=64, overlap=16, batch_size=2, device="cpu")

    out = tmp_path / "out.tif"

    def kill(k: int) -> None:
        if k == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_to_raster(model, meta, wd, out, tile_size=64, overlap=16, batch_size=2, device="cpu",
                          cluster=cluster, checkpoint=ckpt, worker_device="cpu", band_hook=kill)
    assert not out.exists() and (tmp_path / "out.tif.partial").is_dir()
    address = cluster.client.scheduler.address
    res = CliRunner().invoke(main, ["-w", str(wd.root), "predict", "--model", str(ckpt), "--out", str(out),
                                    "--tile-size", "64", "--overlap", "16", "--batch-size", "2", "--device", "cpu",
                                    "--scheduler", address, "--windows-per-task", "2"])
    assert res.exit_code == 0, res.output
    assert "resumed after 1 bands" in res.output
    with rasterio.open(ref) as a, rasterio.open(out) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    resolved = json.loads(wd.path("config.resolved.json").read_text())
    assert resolved["predict"]["scheduler"] == address


def test_kde_on_cluster_is_byte_identical(tmp_path, cluster):
    wd = make_workdir(tmp_path, 260, 170, imagery=False)
    predict_kde(wd, tmp_path / "a.tif", window=64, kernel_size=9, reference=1.0)
    predict_kde(wd, tmp_path / "b.tif", window=64, kernel_size=9, reference=1.0, cluster=cluster)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        pa = a.read(1)
        np.testing.assert_array_equal(pa, b.read(1))
    assert pa.max() > 100 and pa.std() > 5


def test_worker_with_other_weights_is_one_line_error(tmp_path, cluster):
    """The workers check that the checkpoint at the path holds the weights the main process named."""
    wd = make_workdir(tmp_path, 100, 80)
    ckpt = _registry_checkpoint(wd, seed=0)
    other = _registry_checkpoint(wd, seed=5)
    from roadmap_cli.checkpoint import build_from_checkpoint

    model, meta = build_from_checkpoint(ckpt, "cpu")
    with pytest.raises(RoadmapError, match="other weights than the main process"):
        predict_to_raster(model, meta, wd, tmp_path / "x.tif", tile_size=64, overlap=16, device="cpu",
                          cluster=cluster, checkpoint=other, worker_device="cpu")


# ---- vectorize -----------------------------------------------------------------------------------------------------
def _write_mask(path: Path, m: np.ndarray) -> Path:
    h, w = m.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=UTM,
                       transform=Affine(*T05), tiled=True, blockxsize=128, blockysize=128, nodata=0) as ds:
        ds.write(m, 1)
    return path


def test_vectorize_on_cluster_gives_the_same_graph_and_files(tmp_path, cluster):
    from postprocess.vectorize import VectorizeParams

    mask = _write_mask(tmp_path / "mask.tif", _seam_mask(480, 160))
    runs = {}
    for name, on in (("local", None), ("cluster", cluster)):
        wd = Workdir(tmp_path / name)
        opts = VectorizeOptions(mask=mask, params=VectorizeParams(tile_size=160))
        runs[name] = (wd, run_vectorize(wd, opts, cluster=on))
    (wd_a, a), (wd_b, b) = runs["local"], runs["cluster"]
    assert len(a.graph.edges) > 20
    assert_same_graph(a.graph, b.graph)
    assert a.summary["stats"]["tiling"] == b.summary["stats"]["tiling"]
    assert a.summary["stats"]["windows"] == 9
    assert wd_a.path("roads_osm").read_bytes() == wd_b.path("roads_osm").read_bytes()
    assert wd_a.path("roads_osc").read_bytes() == wd_b.path("roads_osc").read_bytes()


def test_vectorize_cli_with_scheduler_address(tmp_path, cluster):
    mask = _write_mask(tmp_path / "mask.tif", _seam_mask(320, 160))
    args = ["vectorize", "--mask", str(mask), "--tile-size", "100"]
    ra = CliRunner().invoke(main, ["-w", str(tmp_path / "a"), *args])
    rb = CliRunner().invoke(main, ["-w", str(tmp_path / "b"), *args, "--scheduler", cluster.client.scheduler.address])
    assert ra.exit_code == 0 and rb.exit_code == 0, ra.output + rb.output
    sa = json.loads((tmp_path / "a" / "vectorize.json").read_text())
    sb = json.loads((tmp_path / "b" / "vectorize.json").read_text())
    assert sa["graph"] == sb["graph"] and sa["fingerprint"] == sb["fingerprint"]
