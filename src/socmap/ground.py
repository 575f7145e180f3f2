"""Distances on the ground: the metric working CRS that the split, kriging and every km figure measure in.

The sample table's ``x, y`` are in this CRS, in metres, and every distance of the pipeline is
Euclidean there. It is the analysis grid's own CRS when that is projected in metres (then ``x, y``
are the grid's coordinates, as the maps'); otherwise (a lon/lat grid such as Google Earth Engine's
EPSG:4326, or a CRS in feet) a transverse Mercator centred on the region (`local_projection`),
scaled so that its point scale is at most 1 over the region. A distance on that map is then never
longer than on the ground (the straight line between two points is at most the mapped length of the
geodesic between them), so rows the split keeps ``distance_threshold`` km apart are at least that
far apart on the ground. Over Bavaria's box the scale lies in 0.99958..1: distances are up to 0.042 %
short (0.5 m of 1.2 km, 8 m of a 20 km test block), where the UTM zone 32 grid of the simulated world
is off by −0.04 %..+0.12 %. Being conformal, it keeps the square test blocks square.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from pyproj import CRS, Proj, Transformer
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import TransverseMercatorConversion

from socmap.region import Region

log = logging.getLogger(__name__)

SAMPLES_PER_SIDE = 21  # the scale factor is taken on a 21 × 21 lon/lat grid over the region's bounds
SHORT_WARNING = 0.005  # a working CRS that shortens distances by more than this is worth a warning


def is_metric(crs) -> bool:
    """Whether a CRS is projected with both axes in metres."""
    crs = CRS.from_user_input(crs)
    return crs.is_projected and all(axis.unit_name == "metre" for axis in crs.axis_info)


def working_crs(grid_crs, region: Region) -> CRS:
    """The grid's CRS when it is projected in metres, else `local_projection` of the region."""
    grid_crs = CRS.from_user_input(grid_crs)
    if is_metric(grid_crs):
        return grid_crs
    working = local_projection(region.lonlat_bounds(), grid_crs.geodetic_crs or CRS.from_epsg(4326))
    low, _ = scale_range(working, region)
    if 1.0 - low > SHORT_WARNING:
        log.warning("the region spans so much that distances in the working CRS %s are up to %.1f %% short; "
                    "a projected data.grid.crs for the region measures better", working.name, 100 * (1 - low))
    return working


def local_projection(bounds: tuple[float, float, float, float], geodetic: CRS) -> CRS:
    """A transverse Mercator centred on lon/lat `bounds`, on the `geodetic` datum, its scale factor on
    the central meridian set so that the point scale is at most 1 everywhere inside the bounds."""
    west, south, east, north = bounds
    lon_0, lat_0 = round((west + east) / 2, 4), round((south + north) / 2, 4)

    def centred(k_0: float) -> ProjectedCRS:
        conversion = TransverseMercatorConversion(latitude_natural_origin=lat_0, longitude_natural_origin=lon_0,
                                                  scale_factor_natural_origin=k_0)
        return ProjectedCRS(conversion, name=f"socmap local transverse Mercator (lon_0 {lon_0:g}, lat_0 "
                                             f"{lat_0:g}, k_0 {k_0:.9f})", geodetic_crs=geodetic)

    lon, lat = _lonlat_grid(bounds)
    largest = float(np.nanmax(Proj(centred(1.0)).get_factors(lon, lat).meridional_scale))
    return centred(np.floor(1e9 / largest) / 1e9)  # rounded down: at most 1 stays at most 1


def scale_range(crs, region: Region) -> tuple[float, float]:
    """The smallest and largest point scale of a projected CRS over the region's lon/lat bounds (for a
    conformal one, the factor by which a short distance there is too long)."""
    factors = Proj(CRS.from_user_input(crs)).get_factors(*_lonlat_grid(region.lonlat_bounds()), errcheck=False)
    scales = np.concatenate([factors.meridional_scale.ravel(), factors.parallel_scale.ravel()])
    return float(np.nanmin(scales)), float(np.nanmax(scales))


def describe(crs, region: Region, grid_crs) -> dict:
    """The working CRS for report.json: its definition, where it comes from, its scale over the region."""
    crs = CRS.from_user_input(crs)
    own = crs == CRS.from_user_input(grid_crs)
    low, high = scale_range(crs, region)
    return {"crs": crs.to_string() if own else crs.to_wkt(), "name": crs.name,
            "from": "the grid's CRS" if own else "a transverse Mercator centred on data.region (a lon/lat grid)",
            "scale": [round(low, 7), round(high, 7)]}


def to_working(x: np.ndarray, y: np.ndarray, crs, working) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) in `crs` in the working CRS; the same arrays when the two are one CRS."""
    if CRS.from_user_input(crs) == CRS.from_user_input(working):
        return x, y
    moved = _transformer(CRS.from_user_input(crs).to_wkt(), CRS.from_user_input(working).to_wkt()).transform(
        x, y, errcheck=False)
    return np.asarray(moved[0], dtype=float), np.asarray(moved[1], dtype=float)


@lru_cache(maxsize=8)
def _transformer(source: str, target: str) -> Transformer:
    return Transformer.from_crs(source, target, always_xy=True)


def _lonlat_grid(bounds: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    west, south, east, north = bounds
    return np.meshgrid(np.linspace(west, east, SAMPLES_PER_SIDE), np.linspace(south, north, SAMPLES_PER_SIDE))
