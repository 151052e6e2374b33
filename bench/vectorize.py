"""Benchmark of `roadmap vectorize`'s mask -> graph step. Prints ONE JSON line.

- ratio (goal <= 2): wall time of `postprocess.vectorize.mask_to_graph` (threshold, clean, skeletonize and trace
  in 4096-pixel windows with exact stitching, prune, merge, close gaps, simplify, georeference, geodesic
  lengths) on an 8192 x 8192 synthetic probability raster, over the time of skimage `skeletonize` +
  `sknw.build_sknw` alone on the same thresholded mask, measured in the same process (best of 2 runs each,
  after a warm-up that compiles every numba function involved).
- rss_ratio (goal <= 1.3): peak resident memory (ru_maxrss, VmHWM beside it) of vectorizing a 16384 x 16384
  GeoTIFF over that of an 8192 x 8192 one, both tiled from disk (`raster_to_graph`, default 4096-pixel
  windows), each in its own subprocess. The rasters are generated window by window into tiled GeoTIFFs by
  another subprocess, so neither the generator nor a whole raster is ever in the measured processes' memory.

The synthetic raster (`postprocess.synthetic`): a wobbly street grid with curved roads and dead-end stubs, road
half-widths 3-11 px, soft edges, noise, false-positive blobs, holes and short gaps. `--quick` uses 2048 / 4096 /
2048 pixels instead of 8192 / 16384 / 8192.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRANSFORM = (0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)
CRS = "EPSG:32633"


def _peak_rss_mb() -> float:
    """Peak RSS of this process in MiB: ru_maxrss (KiB on Linux).

    Linux carries ru_maxrss over from the parent across fork + exec, so the measuring children are started while
    the parent is still small (before it allocates any raster); VmHWM (this process image's own high-water mark)
    is reported beside it as a cross-check.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _vmhwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def generate_geotiff(path: str, size: int, seed: int, block: int = 1024) -> None:
    """Write a size x size synthetic probability raster window by window (tiled, deflate)."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from postprocess.synthetic import make_network, render_window

    net = make_network(size, size, seed=seed)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs=CRS,
                       transform=Affine(*TRANSFORM), tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate", nodata=0, BIGTIFF="IF_SAFER") as ds:
        for r0 in range(0, size, block):
            for c0 in range(0, size, block):
                w, h = min(block, size - c0), min(block, size - r0)
                ds.write(render_window(net, c0, r0, w, h), 1, window=Window(c0, r0, w, h))


def child_rss(path: str) -> None:
    """(subprocess) vectorize a GeoTIFF tiled from disk; print peak RSS and counts."""
    from postprocess.vectorize import VectorizeStats, raster_to_graph

    t = time.perf_counter()
    st = VectorizeStats()
    g = raster_to_graph(path, stats=st)
    hwm = _vmhwm_mb()
    print(json.dumps({"rss_mb": round(_peak_rss_mb(), 1), "vmhwm_mb": None if hwm is None else round(hwm, 1),
                      "seconds": round(time.perf_counter() - t, 2),
                      "edges": len(g.edges), "windows": st.windows, "length_km": round(g.total_length_m / 1000, 1),
                      "seam_mismatches": st.tiling.get("seam_mismatches", 0)}))


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_ratio(size: int, seed: int) -> dict:
    import numpy as np
    import sknw
    from skimage.morphology import skeletonize

    from postprocess.synthetic import synthetic_prob
    from postprocess.vectorize import VectorizeStats, mask_to_graph

    prob = synthetic_prob(size, size, seed=seed)
    # warm-up: compile numba (sknw's own uint16 build, our cached uint32 tracer, DP) and import everything
    small = prob[:512, :512]
    mask_to_graph(small, TRANSFORM, CRS)
    sknw.build_sknw(skeletonize(small >= 128), multi=True)

    def baseline() -> float:
        t = time.perf_counter()
        ske = skeletonize(prob >= 128)
        sknw.build_sknw(ske, multi=True)
        return time.perf_counter() - t

    stats = VectorizeStats()

    def ours() -> float:
        t = time.perf_counter()
        mask_to_graph(prob, TRANSFORM, CRS, stats=stats)
        return time.perf_counter() - t

    tb, tv = [], []
    for _ in range(2):
        tb.append(baseline())
        tv.append(ours())
    return {"size": size, "vectorize_s": round(min(tv), 3), "baseline_s": round(min(tb), 3),
            "ratio": round(min(tv) / min(tb), 3), "edges": stats.edges, "windows": stats.windows,
            "road_fraction": round(float(np.mean(prob >= 128)), 4)}


def rss_ratio(big: int, small: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="roadmap-bench-") as tmp:
        paths = {}
        for size in (small, big):
            p = os.path.join(tmp, f"prob{size}.tif")
            subprocess.run([sys.executable, __file__, "--generate", p, "--size", str(size), "--seed", str(seed)],
                           check=True)
            paths[size] = p
        r_small = _run_child(["--child-rss", paths[small]])
        r_big = _run_child(["--child-rss", paths[big]])
    return {"rss_ratio": round(r_big["rss_mb"] / r_small["rss_mb"], 3), "rss_mb": {str(small): r_small["rss_mb"],
            str(big): r_big["rss_mb"]}, "vmhwm_mb": {str(small): r_small["vmhwm_mb"], str(big): r_big["vmhwm_mb"]},
            "tiled_s": {str(small): r_small["seconds"], str(big): r_big["seconds"]},
            "tiled_edges": {str(small): r_small["edges"], str(big): r_big["edges"]},
            "seam_mismatches": r_small["seam_mismatches"] + r_big["seam_mismatches"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller rasters (2048 / 4096 / 2048)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generate", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-rss", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        generate_geotiff(a.generate, a.size, a.seed)
        return
    if a.child_rss:
        child_rss(a.child_rss)
        return
    t_size, big, small = (2048, 4096, 2048) if a.quick else (8192, 16384, 8192)
    t0 = time.perf_counter()
    res = {"bench": "vectorize", "quick": a.quick, "goal": "ratio <= 2, rss_ratio <= 1.3"}
    rss = rss_ratio(big, small, a.seed)  # first, while this process is small (see _peak_rss_mb)
    res.update(time_ratio(t_size, a.seed))
    res.update(rss)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
