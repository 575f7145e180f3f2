"""The study region: a lon/lat bounding box, or the polygons of a boundary file (which overrides it).

Every test runs in the region's own CRS (EPSG:4326 for the box, the file's
CRS for a boundary), so that a survey row and a map pixel at the same place
get the same answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely
from pyproj import CRS, Transformer

from socmap.config import RegionConfig
from socmap.errors import SocmapError
from socmap.grid import GridSpec

LONLAT = CRS.from_epsg(4326)


class Region:
    """A bounding box in lon/lat or a (multi)polygon in its own CRS."""

    def __init__(self, crs: CRS, bbox: tuple[float, float, float, float] | None = None,
                 polygon: shapely.Geometry | None = None, source: str = "data.region.bbox"):
        self.crs = crs
        self.bbox = bbox
        self.polygon = polygon
        self.source = source
        if polygon is not None:
            shapely.prepare(polygon)

    @classmethod
    def from_config(cls, region_cfg: RegionConfig) -> "Region":
        """The boundary polygons if `boundary` is set, else the bbox."""
        if region_cfg.boundary is None:
            return cls(LONLAT, bbox=tuple(region_cfg.bbox))
        return cls.from_file(region_cfg.boundary)

    @classmethod
    def from_file(cls, path: str | Path) -> "Region":
        """The union of the polygons of a vector file (Shapefile, GeoPackage, GeoJSON, ...)."""
        name = f"data.region.boundary = {str(path)!r}"
        if not Path(path).exists():
            raise SocmapError(f"{name}: file not found")
        try:
            meta, _, wkb, _ = pyogrio.raw.read(path, columns=[])
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise SocmapError(f"{name}: not a readable vector file: {exc}") from None
        if meta.get("crs") is None:
            raise SocmapError(f"{name}: the file has no CRS")
        geoms = shapely.from_wkb(wkb)
        polygons = [g for g in geoms if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
        if not polygons:
            raise SocmapError(f"{name}: holds no polygon (found {meta.get('geometry_type')})")
        return cls(CRS.from_user_input(meta["crs"]), polygon=shapely.union_all(polygons), source=name)

    def contains(self, x: np.ndarray, y: np.ndarray, crs) -> np.ndarray:
        """Whether points (x, y) in `crs` lie inside the region (edges count as inside)."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if CRS.from_user_input(crs) != self.crs:
            x, y = Transformer.from_crs(crs, self.crs, always_xy=True).transform(x, y, errcheck=False)
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if self.polygon is not None:
            return shapely.intersects_xy(self.polygon, x, y)
        west, south, east, north = self.bbox
        with np.errstate(invalid="ignore"):
            return (x >= west) & (x <= east) & (y >= south) & (y <= north)

    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in lon/lat: the box, or the bounds of the polygons."""
        if self.polygon is None:
            return tuple(self.bbox)
        to_lonlat = Transformer.from_crs(self.crs, LONLAT, always_xy=True)
        return tuple(float(v) for v in to_lonlat.transform_bounds(*shapely.bounds(self.polygon), densify_pts=21))

    def contains_lonlat(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Whether points given in lon/lat (EPSG:4326) lie inside the region."""
        return self.contains(lon, lat, LONLAT)

    def mask(self, grid: GridSpec, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """bool [height, width]: which pixel centres of a grid window lie inside the region."""
        x, y = grid.centres(row_off, col_off, height, width)
        return self.contains(x, y, grid.crs).reshape(height, width)

    def outline(self, crs) -> list[tuple[np.ndarray, np.ndarray]]:
        """The region's rings (xs, ys) in `crs`, edges densified so that they bend like the real outline."""
        if self.polygon is None:
            west, south, east, north = self.bbox
            shape = shapely.box(west, south, east, north)
        else:
            shape = self.polygon
        step = max(shapely.length(shape) / 4000.0, 1e-9)
        shape = shapely.segmentize(shape, step)
        rings = []
        for part in getattr(shape, "geoms", [shape]):
            rings.extend([part.exterior, *part.interiors])
        to_crs = Transformer.from_crs(self.crs, crs, always_xy=True)
        return [tuple(np.asarray(v) for v in to_crs.transform(*np.asarray(ring.coords).T[:2])) for ring in rings]
