"""A tiny world of GeoTIFFs whose values encode their place: band A = code(year, row, col), B = -A, S static."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from socmap.config import Params, replace

CRS = "EPSG:25832"
TRANSFORM = from_origin(600_000.0, 5_400_000.0, 1000.0, 1000.0)
H, W = 12, 16
YEARS = list(range(2010, 2015))
NODATA_PIXEL = ("A", 2011, 3, 4)  # band, year, row, col


def code(year, row, col):
    """The value of band A at a pixel: year, row and column readable from its digits."""
    return (np.asarray(year) - 2000) * 10000 + np.asarray(row) * 100 + np.asarray(col)


def write(path, values, transform=TRANSFORM, crs=CRS, nodata=-9999.0):
    """A single-band float32 GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                       dtype="float32", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(values.astype(np.float32), 1)


def coded_params(root, **overrides) -> Params:
    """Params for the coded world under `root`: bands A (yearly), S (static), B (yearly), 2010-2014."""
    return replace(Params(), **{
        "data.rasters.dir": str(root), "data.bands": ["A", "S", "B"], "data.static_bands": ["S"],
        "data.first_year": 2010, "data.last_year": 2014, "sample.time_before": 3, "map.years": [2014],
        **overrides})


def write_coded(root: Path) -> Path:
    """Rasters on a 12×16 grid: A = code(year, row, col), B = -A, S = row·100 + col + 0.25."""
    rows, cols = np.mgrid[0:H, 0:W]
    for year in YEARS:
        a = code(year, rows, cols).astype(np.float32)
        if year == NODATA_PIXEL[1]:
            a[NODATA_PIXEL[2], NODATA_PIXEL[3]] = -9999.0
        write(root / "A" / f"{year}.tif", a)
        write(root / "B" / f"{year}.tif", -code(year, rows, cols))
    write(root / "S" / "static.tif", rows * 100.0 + cols + 0.25)
    return root


def expected_patch(row, col, survey_year, window=5, time_before=3):
    """[C, w, w, T] of the coded world, NaN off the grid or at the nodata pixel."""
    r = window // 2
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    rr, cc = row + dy, col + dx
    inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
    out = np.full((3, window, window, time_before), np.nan)
    for t, year in enumerate(range(survey_year - time_before + 1, survey_year + 1)):
        a = np.where(inside, code(year, rr, cc), np.nan)
        if year == NODATA_PIXEL[1]:
            a[(rr == NODATA_PIXEL[2]) & (cc == NODATA_PIXEL[3])] = np.nan
        out[0, ..., t] = a
        out[1, ..., t] = np.where(inside, rr * 100.0 + cc + 0.25, np.nan)
        out[2, ..., t] = np.where(inside, -code(year, rr, cc), np.nan)
    return out
