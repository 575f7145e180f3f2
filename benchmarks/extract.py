"""Patch extraction speed: socmap against per-point rasterio reads and against the I/O floor.

On one simulated world (a sub-window of Bavaria at the real data's 500 m, with
the real survey density: about 16.5 k rows over all Bavaria), for window 5
and window 33, time
  socmap   RasterCatalog.open + extract_patches with the mean fill, every row, into an output
           array allocated once (best of 3; the stage writes into the memmap of patches.npy);
           socmap_fresh_output_s is the first run, which also pays the OS's first touch of
           the output's fresh pages (slow on virtual machines),
  naive    one boundless rasterio windowed read per row, band and year (datasets
           opened once; timed on a subsample of rows and scaled to all rows),
  floor    reading every raster of the catalog once, whole (best of 3, beside each window),
and the peak memory of socmap's extraction (tracemalloc, in a separate run).
Targets: socmap at least 20× faster than naive and at most 2× the floor.

    .venv/bin/python benchmarks/extract.py [--naive-rows 200]

The last line printed is one JSON object with the figures; `cpu` names the machine (`machine.cpu_note`).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from socmap.config import Params, replace
from socmap.patches import extract_patches, window_years
from socmap.points import clean, read_survey
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.simulate import simulate

from machine import cpu_note

BBOX = [10.9, 48.0, 12.6, 49.3]  # about 125 × 145 km of central Bavaria
WORLD = {
    "simulate.bbox": BBOX,
    "simulate.resolution_m": 500.0,
    "simulate.static_resolution_m": 250.0,
    # Rows per raster pixel as in the real data: 16.5 k rows on the ~525 k pixels of Bavaria's box at 500 m.
    "simulate.sites": 1750,
    "data.region.bbox": BBOX,
}
TARGET_SPEEDUP, TARGET_FLOOR_RATIO = 20.0, 2.0


def socmap_extract(data_cfg, kept, window_size, time_before, out=None):
    """What the sample stage does for the patches: open the catalog, extract and fill into `out`."""
    catalog = RasterCatalog.open(data_cfg)
    patches, _ = extract_patches(catalog, kept["row"].to_numpy(), kept["col"].to_numpy(),
                                 kept["year"].to_numpy(), window_size, time_before, fill="mean", out=out)
    catalog.close()
    return patches


def io_floor(catalog: RasterCatalog) -> float:
    """Seconds to read every file of the catalog once, whole."""
    started = time.perf_counter()
    for f in catalog.files.values():
        with rasterio.open(f.path) as ds:
            ds.read(1)
    return time.perf_counter() - started


def naive(catalog: RasterCatalog, kept, years, window_size: int, rows: np.ndarray) -> float:
    """Seconds for the per-row, per-band, per-year boundless windowed reads of `rows`."""
    radius = window_size // 2
    datasets = {path: rasterio.open(path) for path in {f.path for f in catalog.files.values()}}
    started = time.perf_counter()
    for i in rows:
        x, y, steps = kept["x"].iat[i], kept["y"].iat[i], years[i]
        for band in catalog.cfg.bands:
            for year in steps:
                ds = datasets[catalog.source(band, int(year)).path]
                r, c = ds.index(x, y)  # in the file's own grid: the naive user does not warp
                ds.read(1, window=Window(c - radius, r - radius, window_size, window_size), boundless=True,
                        fill_value=np.nan, out_dtype=np.float32)
    seconds = time.perf_counter() - started
    for ds in datasets.values():
        ds.close()
    return seconds


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naive-rows", type=int, default=100, help="rows timed for the naive reads")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the simulated world's missing band-year is expected
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "synthetic"
        params = replace(Params(), **WORLD, **{"data.rasters.dir": str(world / "rasters"),
                                               "data.points.path": str(world / "points.csv")})
        simulate(params.simulate, world)
        catalog = RasterCatalog.open(params.data)
        kept, _, _ = clean(read_survey(params.data.points), params.data, params.sample.time_before,
                           params.sample.early_years, catalog.grid, Region.from_config(params.data.region))
        years = window_years(kept["year"].to_numpy(), params.sample.time_before, params.data.first_year)
        subsample = np.random.default_rng(0).choice(len(kept), size=min(args.naive_rows, len(kept)), replace=False)
        result = {
            "cpu": cpu_note(),
            "world": {"bbox": BBOX, "grid": catalog.grid.to_dict()["shape"], "res_m": catalog.grid.res[0],
                      "rasters": len(catalog.files), "rows": len(kept), "bands": len(params.data.bands),
                      "time_before": params.sample.time_before},
            "naive_note": f"naive timed on {subsample.size} rows, scaled to {len(kept)}",
        }
        met = True
        for window_size in (5, 33):
            floor = min(io_floor(catalog) for _ in range(3))  # beside each measurement: the machine drifts
            started = time.perf_counter()
            out = socmap_extract(params.data, kept, window_size, params.sample.time_before)
            fresh = time.perf_counter() - started
            ours = best_of(3, lambda out=out: socmap_extract(params.data, kept, window_size,
                                                             params.sample.time_before, out))
            del out
            naive_s = naive(catalog, kept, years, window_size, subsample) * len(kept) / subsample.size
            tracemalloc.start()
            patches = socmap_extract(params.data, kept, window_size, params.sample.time_before)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            speedup, ratio = naive_s / ours, ours / floor
            ok = speedup >= TARGET_SPEEDUP and ratio <= TARGET_FLOOR_RATIO
            met = met and ok
            result[f"window_{window_size}"] = {
                "io_floor_s": round(floor, 4), "socmap_s": round(ours, 4), "socmap_fresh_output_s": round(fresh, 4),
                "naive_s": round(naive_s, 3), "speedup_vs_naive": round(speedup, 1),
                "ratio_to_io_floor": round(ratio, 3), "peak_mb": round(peak / 2**20, 1),
                "patches_mb": round(patches.nbytes / 2**20, 1), "targets_met": ok,
            }
        result["targets"] = {"speedup_vs_naive_min": TARGET_SPEEDUP, "ratio_to_io_floor_max": TARGET_FLOOR_RATIO,
                             "met": met}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
