"""Patch extraction speed: socmap against per-point rasterio reads and against the I/O floor.

On one simulated world (a sub-window of Bavaria at the real data's 500 m, with
the real survey density: about 16.5 k rows over all Bavaria), written in each
layout socmap reads (single_band {band}/{year}.tif; multiband, one file a year
with the yearly bands as named layers; tiled, every single-band file as 2 × 2
Earth Engine tiles read as one mosaic; lonlat, single-band files in EPSG:4326 on
their own lon/lat grid; warped, the same files read onto a data.grid in
EPSG:25832 at 500 m, every layer through a warped view), for window 5 and 33, time
  socmap   RasterCatalog.open + extract_patches with the mean fill, every row, into an output
           array allocated once (best of 3; the stage writes into the memmap of patches.npy);
           socmap_fresh_output_s is the first run, which also pays the OS's first touch of
           the output's fresh pages (slow on virtual machines),
  naive    one boundless rasterio windowed read per row, band and year (datasets, or a
           tiled band-year's mosaic, opened once; timed on a subsample of rows and scaled
           to all rows),
  floor    reading every GeoTIFF of the world once, whole, every layer (best of 3, beside
           each window),
and the peak memory of socmap's extraction (tracemalloc, in a separate run).
Targets: socmap at least 20× faster than naive and at most 2× the floor, for the layouts
(single_band, multiband, tiled); lonlat and warped are reported beside them (warping every
layer is work that no floor of reads includes).

    .venv/bin/python benchmarks/extract.py [--naive-rows 200] [--layouts single_band multiband tiled lonlat warped]

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
from pyproj import Transformer
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
# layout -> (simulate.* of its world, data.rasters.* that read it)
LAYOUTS = {
    "single_band": ({}, {}),
    "multiband": ({"simulate.layout": "multiband"}, {"data.rasters.yearly": "{year}.tif"}),
    "tiled": ({"simulate.layout": "tiled"}, {"data.rasters.yearly": "{band}/{year}-*.tif",
                                              "data.rasters.static": "{band}/static-*.tif"}),
    "lonlat": ({"simulate.crs": "EPSG:4326"}, {}),
    "warped": ({"simulate.crs": "EPSG:4326"}, {"data.grid.crs": "EPSG:25832", "data.grid.resolution": 500.0}),
}
TARGET_SPEEDUP, TARGET_FLOOR_RATIO = 20.0, 2.0
TARGETED = ("single_band", "multiband", "tiled")


def socmap_extract(data_cfg, kept, window_size, time_before, out=None):
    """What the sample stage does for the patches: open the catalog, extract and fill into `out`."""
    catalog = RasterCatalog.open(data_cfg)
    patches, _ = extract_patches(catalog, kept["row"].to_numpy(), kept["col"].to_numpy(),
                                 kept["year"].to_numpy(), window_size, time_before, fill="mean", out=out)
    catalog.close()
    return patches


def io_floor(root: Path) -> float:
    """Seconds to read every GeoTIFF under `root` once, whole, every layer."""
    started = time.perf_counter()
    for path in sorted(root.rglob("*.tif")):
        with rasterio.open(path) as ds:
            ds.read()
    return time.perf_counter() - started


def naive(catalog: RasterCatalog, kept, years, window_size: int, rows: np.ndarray) -> float:
    """Seconds for the per-row, per-band, per-year boundless windowed reads of `rows`."""
    radius = window_size // 2
    datasets = {f.source: rasterio.open(f.source) for f in catalog.files.values()}
    # the rows in each file's own CRS, transformed once: the naive user reads the files as they are
    in_crs: dict = {}
    for ds in datasets.values():
        if ds.crs.to_string() not in in_crs:
            in_crs[ds.crs.to_string()] = Transformer.from_crs(catalog.grid.crs, ds.crs, always_xy=True).transform(
                kept["x"].to_numpy(), kept["y"].to_numpy())
    at = {source: in_crs[ds.crs.to_string()] for source, ds in datasets.items()}
    started = time.perf_counter()
    for i in rows:
        steps = years[i]
        for band in catalog.cfg.bands:
            for year in steps:
                f = catalog.source(band, int(year))
                ds, (xs, ys) = datasets[f.source], at[f.source]
                r, c = ds.index(xs[i], ys[i])
                ds.read(f.layer, window=Window(c - radius, r - radius, window_size, window_size), boundless=True,
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


def measure(world: Path, params, naive_rows: int) -> dict:
    """The figures of one layout's world, at window 5 and 33."""
    catalog = RasterCatalog.open(params.data)
    kept, _, _ = clean(read_survey(params.data.points), params.data, params.sample.time_before,
                       params.sample.early_years, catalog.grid, Region.from_config(params.data.region))
    years = window_years(kept["year"].to_numpy(), params.sample.time_before, params.data.first_year)
    subsample = np.random.default_rng(0).choice(len(kept), size=min(naive_rows, len(kept)), replace=False)
    result = {"grid": catalog.grid.to_dict()["shape"], "files": len(list((world / "rasters").rglob("*.tif"))),
              "layers": len(catalog.files), "warped": len(catalog.warped), "rows": len(kept),
              "naive_note": f"naive timed on {subsample.size} rows, scaled to {len(kept)}"}
    for window_size in (5, 33):
        floor = min(io_floor(world / "rasters") for _ in range(3))  # beside each measurement: the machine drifts
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
        result[f"window_{window_size}"] = {
            "io_floor_s": round(floor, 4), "socmap_s": round(ours, 4), "socmap_fresh_output_s": round(fresh, 4),
            "naive_s": round(naive_s, 3), "speedup_vs_naive": round(speedup, 1),
            "ratio_to_io_floor": round(ratio, 3), "peak_mb": round(peak / 2**20, 1),
            "patches_mb": round(patches.nbytes / 2**20, 1),
            "targets_met": speedup >= TARGET_SPEEDUP and ratio <= TARGET_FLOOR_RATIO,
        }
    catalog.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naive-rows", type=int, default=100, help="rows timed for the naive reads")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(TARGETED))
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the simulated world's missing band-year is expected
    result = {"cpu": cpu_note(),
              "world": {"bbox": BBOX, "res_m": WORLD["simulate.resolution_m"], "bands": len(Params().data.bands),
                        "time_before": Params().sample.time_before}, "layouts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts:
            world_keys, patterns = LAYOUTS[layout]
            world = Path(tmp) / layout
            params = replace(Params(), **WORLD, **world_keys, **patterns,
                             **{"data.rasters.dir": str(world / "rasters"),
                                "data.points.path": str(world / "points.csv")})
            simulate(params.simulate, world)
            result["layouts"][layout] = measure(world, params, args.naive_rows)
    met = all(figures[f"window_{w}"]["targets_met"] for layout, figures in result["layouts"].items()
              if layout in TARGETED for w in (5, 33))
    result["targets"] = {"speedup_vs_naive_min": TARGET_SPEEDUP, "ratio_to_io_floor_max": TARGET_FLOOR_RATIO,
                         "layouts": [layout for layout in args.layouts if layout in TARGETED], "met": met}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
