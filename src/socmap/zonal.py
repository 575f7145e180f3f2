"""Means over polygons (districts, farms, a protected area) with intervals that count the errors their
pixels share.

The mean SOC of a polygon is the mean of its mapped pixels (centres inside). Its error is not the
mean of the pixels' errors divided by √n: the pixels of a polygon share most of their error. Two
parts, as the calibration splits a pixel's error (`socmap.correlation`):

- the ensemble's: each member's mean over the polygon, and their spread: the members' covariance
  between every pair of pixels, exactly, whatever its range; weighted as the calibration weighs the
  spread (`spread_weight`, over the number of runs);
- the shared: (1/n²)·Σᵢⱼ σᵢσⱼρᵢⱼ, with σ each pixel's shared scale and ρ the correlation of shared
  errors between two pixels (`SharedError`: the kriging errors' and a floor for the bias), over every
  pixel of a polygon, or over an even grid of about `SAMPLE_PIXELS` of them in a larger one (every
  k-th row and column of the map grid).

The interval is the mean ± the normal quantile of the nominal level times the square root of their
sum: a mean over many pixels is close to normal. Blocks of the map add their pixels to per-polygon
sums as they stream by (`Polygons.block_sums`, on the process that maps the block); the sums are
added up and turned into a table at the end (`polygon_table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyogrio.raw
import shapely
from pyproj import CRS, Transformer

from socmap.correlation import ErrorCorrelation, normal_quantile
from socmap.errors import SocmapError
from socmap.grid import GridSpec
from socmap.kriging import ResidualField
from socmap.metrics import spread

SAMPLE_PIXELS = 300  # pixels of a large polygon whose pairs give its shared variance
SUMS = "polygon_sums"  # the entry of a block's outputs that carries its polygon sums (not a band)


@dataclass
class PolygonSums:
    """One polygon's sums over the pixels mapped so far, in one map year."""

    members: np.ndarray  # [M] each member's sum of predictions, g/kg
    pixels: int = 0
    inside_aoa: int = 0
    sample: list[np.ndarray] = field(default_factory=list)  # [3, m] arrays of x, y, σ of the sampled pixels

    def add(self, other: "PolygonSums") -> None:
        self.members = self.members + other.members
        self.pixels += other.pixels
        self.inside_aoa += other.inside_aoa
        self.sample.extend(other.sample)


@dataclass(frozen=True)
class Polygons:
    """The polygons of a vector file on the map's grid: their attributes, shapes and sampling steps."""

    attributes: pd.DataFrame  # one row per polygon: the file's fields
    shapes: list  # shapely polygons in the grid's CRS, prepared
    steps: np.ndarray  # [P] every k-th row and column of the grid is in a polygon's sample
    source: str

    @classmethod
    def read(cls, path: str | Path, grid: GridSpec, key: str = "map.polygons") -> "Polygons":
        """The (multi)polygons of `path` (any vector file GDAL reads, with a CRS), moved onto `grid`'s CRS."""
        name = f"{key} = {str(path)!r}"
        if not Path(path).exists():
            raise SocmapError(f"{name}: file not found")
        try:
            meta, _, wkb, values = pyogrio.raw.read(path)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise SocmapError(f"{name}: not a readable vector file: {exc}") from None
        if meta.get("crs") is None:
            raise SocmapError(f"{name}: the file has no CRS")
        geoms = shapely.from_wkb(wkb)
        kept = [i for i, g in enumerate(geoms) if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
        if not kept:
            raise SocmapError(f"{name}: holds no polygon (found {meta.get('geometry_type')})")
        to_grid = Transformer.from_crs(CRS.from_user_input(meta["crs"]), grid.crs, always_xy=True)
        shapes = [shapely.transform(geoms[i], lambda xy: np.stack(to_grid.transform(*xy.T), axis=1))
                  for i in kept]
        for shape in shapes:
            shapely.prepare(shape)
        attributes = pd.DataFrame({str(f): np.asarray(v)[kept] for f, v in zip(meta["fields"], values)})
        attributes.insert(0, "polygon", np.arange(len(kept)))
        pixel_area = grid.res[0] * grid.res[1]
        steps = np.array([max(1, math.ceil(math.sqrt(s.area / pixel_area / SAMPLE_PIXELS))) for s in shapes])
        return cls(attributes, shapes, steps, name)

    def __len__(self) -> int:
        return len(self.shapes)

    def block_sums(self, rows: np.ndarray, cols: np.ndarray, centres: tuple[np.ndarray, np.ndarray],
                   ground: tuple[np.ndarray, np.ndarray], predicted: np.ndarray, sigma: np.ndarray,
                   inside_aoa: np.ndarray | None) -> dict[int, PolygonSums]:
        """Each polygon's sums over one block's pixels in one map year (the polygons it touches).

        Args:
            rows, cols: [h, w] grid positions; centres: x, y [h, w] of the pixel centres in the grid's
                CRS (the polygons'); ground: the same in the working CRS (metres, as the kriging fields);
            predicted: [M, h, w] the members' (kriged) predictions, NaN where unpredicted;
            sigma: [h, w] each pixel's shared scale; inside_aoa: [h, w] bool, or None.
        """
        (x, y), mapped = centres, np.isfinite(predicted).all(axis=0)
        out = {}
        for index, shape in enumerate(self.shapes):
            west, south, east, north = shape.bounds
            here = mapped & (x >= west) & (x <= east) & (y >= south) & (y <= north)  # the cheap test first
            if not here.any():
                continue
            here[here] = shapely.intersects_xy(shape, x[here], y[here])
            if not here.any():
                continue
            step = self.steps[index]
            sampled = here & (rows % step == 0) & (cols % step == 0)
            out[index] = PolygonSums(predicted[:, here].sum(axis=1, dtype=np.float64), int(here.sum()),
                                     int(inside_aoa[here].sum()) if inside_aoa is not None else 0,
                                     [np.stack([ground[0][sampled], ground[1][sampled], sigma[sampled]])])
        return out


def add_sums(totals: dict[int, dict[int, PolygonSums]], block: dict[int, dict[int, PolygonSums]]) -> None:
    """Add one block's sums (map year -> polygon -> sums) into the running `totals`, in place."""
    for year, polygons in block.items():
        for index, sums in polygons.items():
            if index in totals.setdefault(year, {}):
                totals[year][index].add(sums)
            else:
                totals[year][index] = sums


def polygon_table(polygons: Polygons, sums: dict[int, PolygonSums], correlation: ErrorCorrelation,
                  calibration: dict, fields: Sequence[ResidualField], with_aoa: bool) -> pd.DataFrame:
    """One row per polygon: its attributes, mapped pixels, mean SOC and its interval (g/kg).

    Columns besides the attributes: pixels, mean, ensemble_std (the members' spread of their means),
    std (the mean's error: shared and ensemble), lower, upper (at calibration["interval"]), the mean of
    the pixels' shared scale (`pixel_std`, what a single pixel's error would be) and with the AOA the
    share of the pixels inside it. A polygon with no mapped pixel has NaN figures.
    """
    z = normal_quantile(calibration["interval"])
    rows = []
    for index in range(len(polygons)):
        entry = sums.get(index)
        if entry is None or entry.pixels == 0:
            rows.append({"pixels": 0})
            continue
        means = entry.members / entry.pixels
        member_std = float(np.nan_to_num(spread(means))) if len(means) > 1 else 0.0
        x, y, sigma = np.concatenate(entry.sample, axis=1)
        variance = (correlation.places.mean_variance(x, y, sigma, entry.pixels, fields)
                    + calibration["spread_weight"] * member_std**2 / calibration["runs"])
        mean, std = float(means.mean()), math.sqrt(variance)
        row = {"pixels": entry.pixels, "mean": mean, "ensemble_std": member_std, "std": std,
               "lower": max(mean - z * std, 0.0), "upper": mean + z * std, "pixel_std": float(np.mean(sigma))}
        if with_aoa:
            row["inside_aoa"] = entry.inside_aoa / entry.pixels
        rows.append(row)
    return pd.concat([polygons.attributes.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
