"""The point store: window queries against brute-force filtering, extents over several flushes, old format."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from roadmap_cli.errors import RoadmapError
from roadmap_cli.store import SAMPLE_DTYPE, PointStore, StoreWriter, empty_samples, take_records

W, H, TILE = 300, 200, 64


def random_samples(n: int, seed: int = 0, width: int = W, height: int = H) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["col"] = rng.uniform(0, width, n)
    s["row"] = rng.uniform(0, height, n)
    s["time"] = 1.7e9 + np.arange(n)
    s["vehicle"] = rng.integers(0, 5, n)
    s["interval"] = rng.uniform(1, 30, n)
    s["speed"] = rng.uniform(0, 20, n)
    s["bearing"] = rng.uniform(0, 360, n)
    # samples exactly on tile borders and the last pixel edge
    s["col"][:8] = [0.0, 64.0, 128.0, 63.999999, 299.999, 64.0, 192.0, 256.0]
    s["row"][:8] = [0.0, 64.0, 0.0, 127.9999, 199.999, 128.0, 64.0, 199.0]
    return s


def write_store(path, samples, chunks: int = 1, buffer_bytes: int = 32 << 20) -> PointStore:
    with StoreWriter(path, W, H, tile_size=TILE, buffer_bytes=buffer_bytes) as w:
        for part in np.array_split(samples, chunks):
            w.append(part)
        w.close([f"v{i}" for i in range(5)])
    return PointStore(path)


def brute(samples: np.ndarray, c0: float, r0: float, w: float, h: float) -> np.ndarray:
    m = (samples["col"] >= c0) & (samples["col"] < c0 + w) & (samples["row"] >= r0) & (samples["row"] < r0 + h)
    return samples[m]


def canon(a: np.ndarray) -> np.ndarray:
    return np.sort(a, order=["time"])


@pytest.mark.parametrize("chunks,buffer_bytes", [(1, 32 << 20), (7, 4000)])
def test_query_matches_brute_force_on_random_windows(tmp_path, chunks, buffer_bytes):
    samples = random_samples(5000, seed=1)
    st = write_store(tmp_path / "gps", samples, chunks, buffer_bytes)
    assert st.n_samples == samples.size and st.vehicles == [f"v{i}" for i in range(5)]
    rng = np.random.default_rng(2)
    windows = [(0, 0, W, H), (60, 60, 10, 10), (-50, -30, 100, 80), (250, 150, 100, 100), (64, 64, 64, 64),
               (63.5, 10.25, 1.0, 150.0), (W + 5, 0, 10, 10), (-20, -20, 5, 5)]
    windows += [tuple(rng.uniform(-80, 320, 2)) + tuple(rng.uniform(1, 200, 2)) for _ in range(40)]
    for c0, r0, w, h in windows:
        got = st.query(c0, r0, w, h)
        ref = brute(samples, c0, r0, w, h)
        assert got.dtype == SAMPLE_DTYPE
        np.testing.assert_array_equal(canon(got), canon(ref), err_msg=str((c0, r0, w, h)))


def test_tiles_and_counts(tmp_path):
    samples = random_samples(2000, seed=3)
    st = write_store(tmp_path / "gps", samples, chunks=3, buffer_bytes=10_000)
    tiles = sorted(st.tiles())
    assert sum(st.counts.values()) == samples.size
    total = 0
    for ty, tx in tiles:
        t = st.read_tile(ty, tx)
        assert (np.floor(t["col"] / TILE) == tx).all() and (np.floor(t["row"] / TILE) == ty).all()
        total += t.size
    assert total == samples.size
    assert st.read_tile(99, 99).size == 0


def test_empty_store_and_errors(tmp_path):
    with StoreWriter(tmp_path / "gps", W, H, tile_size=TILE) as w:
        w.close([])
    st = PointStore(tmp_path / "gps")
    assert st.n_samples == 0 and st.query(0, 0, W, H).size == 0 and st.all_samples().dtype == SAMPLE_DTYPE
    with pytest.raises(RoadmapError, match="no GPS point store"):
        PointStore(tmp_path / "nothing")
    (tmp_path / "gps" / "meta.json").write_text("{not json")
    with pytest.raises(RoadmapError, match="corrupt"):
        PointStore(tmp_path / "gps")
    bad = random_samples(10)
    bad["col"][0] = W + 100
    with pytest.raises(ValueError, match="outside the grid"), StoreWriter(tmp_path / "gps2", W, H, TILE) as w:
        w.append(bad)
        w.close([])
    assert not (tmp_path / "gps2").exists()  # a failed writer removes its folder


def test_pickle_does_not_ship_the_data(tmp_path):
    st = write_store(tmp_path / "gps", random_samples(3000, seed=4))
    st.query(0, 0, 100, 100)  # opens the memory map
    blob = pickle.dumps(st)
    assert len(blob) < 20_000
    again = pickle.loads(blob)
    np.testing.assert_array_equal(canon(again.query(0, 0, 100, 100)), canon(st.query(0, 0, 100, 100)))


def test_reads_version_1_stores(tmp_path):
    samples = random_samples(500, seed=5)
    root = tmp_path / "gps"
    (root / "tiles").mkdir(parents=True)
    tx = (samples["col"] // TILE).astype(int)
    ty = (samples["row"] // TILE).astype(int)
    counts = {}
    for a, b in sorted(set(zip(ty.tolist(), tx.tolist(), strict=True))):
        part = samples[(ty == a) & (tx == b)]
        part.tofile(root / "tiles" / f"{a}_{b}.bin")
        counts[f"{a}_{b}"] = int(part.size)
    meta = {"version": 1, "tile_size": TILE, "width": W, "height": H, "tiles_x": 5, "tiles_y": 4,
            "n_samples": int(samples.size), "counts": counts}
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "vehicles.json").write_text("[]")
    st = PointStore(root)
    np.testing.assert_array_equal(canon(st.query(30, 40, 100, 90)), canon(brute(samples, 30, 40, 100, 90)))


def test_take_records_matches_fancy_indexing():
    s = random_samples(100, seed=6)
    idx = np.random.default_rng(0).permutation(100)[:40]
    np.testing.assert_array_equal(take_records(s, idx), s[idx])
    mask = s["speed"] > 10
    np.testing.assert_array_equal(take_records(s, mask), s[mask])
    assert take_records(empty_samples(), np.zeros(0, dtype=np.int64)).size == 0


def test_append_with_caller_tile_ids_and_reused_buffers(tmp_path):
    s = random_samples(3000, seed=5)
    ref = write_store(tmp_path / "ref", s)
    with StoreWriter(tmp_path / "ids", W, H, tile_size=TILE, buffer_bytes=SAMPLE_DTYPE.itemsize * 700) as w:
        for part in np.array_split(s, 9):  # parts straddle the 700-sample buffer: several flushes reuse it
            w.append(part, tile_ids=w.tile_ids(part["col"], part["row"]))
        with pytest.raises(ValueError, match="one id per sample"):
            w.append(s[:3], tile_ids=np.zeros(2, dtype=np.int64))
        w.close([f"v{i}" for i in range(5)])
    got = PointStore(tmp_path / "ids")
    assert got.n_samples == s.size and got.counts == ref.counts
    index = np.load(tmp_path / "ids" / "index.npy")
    assert index[:, 2].max() <= 700 and len(index) > len(np.load(tmp_path / "ref" / "index.npy"))
    for c0, r0, w_, h_ in [(0, 0, W, H), (10.5, 20.25, 100, 64), (250, 150, 80, 80)]:
        np.testing.assert_array_equal(canon(got.query(c0, r0, w_, h_)), canon(brute(s, c0, r0, w_, h_)))


def test_flushing_on_an_executor_writes_the_same_store(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    s = random_samples(4000, seed=8)
    paths = []
    for name, executor in (("sync", None), ("async", ThreadPoolExecutor(1))):
        with StoreWriter(tmp_path / name, W, H, tile_size=TILE, buffer_bytes=SAMPLE_DTYPE.itemsize * 300,
                         executor=executor) as w:
            for part in np.array_split(s, 13):
                w.append(part)
            w.append(w.sort_by_tile(s[:50]), tile_sorted=True)  # a sorted run between buffered ones
            w.append(s[50:77])
            w.close([f"v{i}" for i in range(5)])
        if executor is not None:
            executor.shutdown()
        paths.append(tmp_path / name)
    for f in ("samples.bin", "index.npy", "meta.json"):
        assert (paths[0] / f).read_bytes() == (paths[1] / f).read_bytes(), f
    got = PointStore(paths[1])
    ref = np.concatenate([s, s[:77]])
    assert got.n_samples == ref.size and len(np.load(paths[1] / "index.npy")) > 13
    np.testing.assert_array_equal(canon(got.query(0, 0, W, H)), canon(ref))
    np.testing.assert_array_equal(canon(got.query(30, 40, 90, 70)), canon(brute(ref, 30, 40, 90, 70)))
