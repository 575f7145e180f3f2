"""Raster grids: a CRS, the affine transform of the upper-left corner and a shape; the nodata value
socmap writes.

One grid class serves every stage: the reference grid the sample and map stages read onto, the
simulated world's grids, the maps' windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

NODATA = -9999.0  # the nodata value of every raster socmap writes (the simulated world's, the maps)


@dataclass(frozen=True)
class GridSpec:
    """A raster grid: CRS, affine transform of the upper-left corner, and shape."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def north_up(cls, crs: str | CRS, west: float, north: float, res: float, width: int, height: int) -> GridSpec:
        """A grid of square `res` pixels, `width` × `height`, whose upper-left corner is (west, north)."""
        return cls(CRS.from_user_input(crs), Affine(res, 0.0, west, 0.0, -res, north), width, height)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y), positive, in CRS units."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of a north-up grid, in CRS units."""
        t = self.transform
        return t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f

    def regridded(self, crs: str | CRS, res: float | None = None,
                  extent: tuple[float, float, float, float] | None = None) -> GridSpec:
        """A north-up grid in `crs` of square `res` pixels (None: this grid's x pixel size) over `extent`
        (west, south, east, north in `crs`; None: this grid's bounds there, widened to whole pixels of
        `res` counted from this grid's corner in its own CRS, or from the CRS origin in another, as
        gdalwarp -tap does)."""
        crs = CRS.from_user_input(crs)
        res = self.res[0] if res is None else float(res)
        if extent is None:
            same = crs == self.crs
            west, south, east, north = self.bounds if same else transform_bounds(self.crs, crs, *self.bounds,
                                                                                  densify_pts=21)
            x0, y0 = (self.transform.c, self.transform.f) if same else (0.0, 0.0)
            west, east = x0 + math.floor((west - x0) / res) * res, x0 + math.ceil((east - x0) / res) * res
            south, north = y0 + math.floor((south - y0) / res) * res, y0 + math.ceil((north - y0) / res) * res
        else:
            west, south, east, north = extent
        width, height = math.ceil((east - west) / res - 1e-9), math.ceil((north - south) / res - 1e-9)
        return GridSpec.north_up(crs, west, north, res, width, height)

    def index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the pixels holding points (x, y) in the grid's CRS; may lie off the grid."""
        inverse = ~self.transform
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        col = inverse.a * x + inverse.b * y + inverse.c
        row = inverse.d * x + inverse.e * y + inverse.f
        with np.errstate(invalid="ignore"):
            big = np.iinfo(np.int64).max // 4  # non-finite coordinates land far off the grid
            row = np.nan_to_num(np.floor(row), nan=-big, posinf=big, neginf=-big)
            col = np.nan_to_num(np.floor(col), nan=-big, posinf=big, neginf=-big)
        return row.astype(np.int64), col.astype(np.int64)

    def contains_index(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """Whether pixel (row, col) lies on the grid."""
        return (row >= 0) & (row < self.height) & (col >= 0) & (col < self.width)

    def window_transform(self, row_off: int, col_off: int) -> Affine:
        """Transform of a window whose upper-left pixel is (row_off, col_off) of this grid."""
        return self.transform @ Affine.translation(col_off, row_off)

    def centres(self, row_off: int, col_off: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """x, y of the pixel centres of a window, each [height, width]."""
        cols, rows = np.meshgrid(np.arange(width) + col_off + 0.5, np.arange(height) + row_off + 0.5)
        t = self.transform
        return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f

    def to_dict(self) -> dict:
        """The grid as plain JSON values (report.json)."""
        return {"crs": self.crs.to_string(), "transform": list(self.transform)[:6],
                "res": list(self.res), "shape": [self.height, self.width]}
