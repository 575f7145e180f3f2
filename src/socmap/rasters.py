"""The raster catalog: every band-year file found, checked and aligned onto one reference grid.

A file on the reference grid (same CRS and pixel size, its origin a whole
number of pixels away) is read through a shifted window; any other file
(another CRS, resolution or pixel phase, EPSG:4326 exports from Google Earth
Engine included) is warped onto the requested window of the reference grid
with `data.rasters.resampling`. Windows may reach beyond the grid or the file:
pixels there, and nodata pixels, come back as NaN. Datasets are opened lazily,
once per process, so a catalog can be handed to worker processes.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import reproject
from rasterio.windows import Window

from socmap.config import DataConfig
from socmap.errors import SocmapError
from socmap.grid import GridSpec

log = logging.getLogger(__name__)

ALIGN_TOLERANCE = 1e-6  # in pixels: closer than this counts as the same grid
READ_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class RasterFile:
    """One band-year (or static) file and how it lines up with the reference grid."""

    path: str
    band: str
    year: Optional[int]  # None: a static band
    grid: GridSpec  # the file's own grid
    nodata: Optional[float]
    offset: Optional[tuple[int, int]]  # (row, col) in this file of the grid's pixel (0, 0); None: warped

    @property
    def label(self) -> str:
        return f"band {self.band} {'static' if self.year is None else f'year {self.year}'} ({self.path})"


class RasterCatalog:
    """Every raster of `data.bands` over `data.first_year`..`data.last_year`, on one reference grid."""

    def __init__(self, cfg: DataConfig, grid: GridSpec, files: dict, missing: dict, warped: list,
                 shifted: list):
        self.cfg = cfg
        self.grid = grid
        self.files = files  # (band, year or None) -> RasterFile
        self.missing = missing  # band -> {year: source year, or "mean"}
        self.warped = warped  # report entries of files warped onto the grid
        self.shifted = shifted  # report entries of files on the grid with another extent
        self.resampling = Resampling[cfg.rasters.resampling]
        self._stats: dict[str, tuple[float, int]] = {}  # path -> (sum, count) of valid grid pixels
        self._datasets: dict[str, rasterio.DatasetReader] = {}
        self._pid = os.getpid()

    # ------------------------------------------------------------------ opening and checks

    @classmethod
    def open(cls, data_cfg: DataConfig) -> "RasterCatalog":
        """Find and check every file; raise `SocmapError` naming the first missing or unreadable one."""
        root = Path(data_cfg.rasters.dir)
        if not root.is_dir():
            raise SocmapError(f"data.rasters.dir = {str(root)!r}: no such directory")
        headers: dict = {}
        missing: dict = {}
        for band in data_cfg.bands:
            if band in data_cfg.static_bands:
                path = root / data_cfg.rasters.static.format(band=band)
                if not path.is_file():
                    raise SocmapError(f"static band {band}: file {path} not found "
                                      f"(data.rasters.static = {data_cfg.rasters.static!r})")
                headers[(band, None)] = _header(path, band, None)
                continue
            for year in data_cfg.years:
                path = root / data_cfg.rasters.yearly.format(band=band, year=year)
                if path.is_file():
                    headers[(band, year)] = _header(path, band, year)
            found = sorted(y for b, y in headers if b == band)
            if not found:
                example = root / data_cfg.rasters.yearly.format(band=band, year=data_cfg.first_year)
                raise SocmapError(f"band {band}: no file for any year {data_cfg.first_year}..{data_cfg.last_year} "
                                  f"(looked for {example} and the like; data.rasters.yearly = "
                                  f"{data_cfg.rasters.yearly!r})")
            gaps = [y for y in data_cfg.years if y not in found]
            if gaps:
                missing[band] = {y: ("mean" if data_cfg.rasters.missing_years == "mean"
                                     else _nearest(y, found)) for y in gaps}
                log.warning("band %s: no file for %s; filled from %s", band, ", ".join(map(str, gaps)),
                            "the mean of its years" if data_cfg.rasters.missing_years == "mean"
                            else "the nearest year")

        reference = data_cfg.rasters.reference or (data_cfg.yearly_bands or data_cfg.bands)[0]
        ref_key = min((k for k in headers if k[0] == reference), key=lambda k: k[1] or 0)
        ref = headers[ref_key]
        grid = GridSpec(ref["crs"], ref["transform"], ref["width"], ref["height"])
        files, warped, shifted = {}, [], []
        for key, h in headers.items():
            offset, reasons = _alignment(h, grid)
            files[key] = RasterFile(h["path"], key[0], key[1], GridSpec(h["crs"], h["transform"], h["width"],
                                                                        h["height"]), h["nodata"], offset)
            entry = {"band": key[0], "year": key[1], "path": h["path"], "crs": h["crs"].to_string(),
                     "res": [abs(h["transform"].a), abs(h["transform"].e)], "shape": [h["height"], h["width"]]}
            if offset is None:
                warped.append({**entry, "differs_in": reasons, "resampling": data_cfg.rasters.resampling})
            elif reasons:
                shifted.append({**entry, "offset": list(offset)})
        if warped:
            log.info("%d raster(s) warped onto the %s grid of %s with %s resampling: %s", len(warped),
                     grid.crs.to_string(), reference, data_cfg.rasters.resampling,
                     ", ".join(sorted({f"{w['band']} ({'/'.join(w['differs_in'])})" for w in warped})))
        catalog = cls(data_cfg, grid, files, missing, warped, shifted)
        # Keep the datasets the checks opened: this process may read them (a fork or pickle drops them).
        catalog._datasets = {h["path"]: h["dataset"] for h in headers.values()}
        return catalog

    def describe(self) -> dict:
        """What the catalog found, for report.json."""
        return {
            "grid": self.grid.to_dict(),
            "warped": self.warped,
            "shifted": self.shifted,
            "missing_band_years": {b: {str(y): s for y, s in m.items()} for b, m in self.missing.items()},
        }

    # ------------------------------------------------------------------ reading

    def source(self, band: str, year: int) -> RasterFile | tuple[RasterFile, ...]:
        """The file that stands for `band` in `year`: its own, the nearest year's, or all (to average)."""
        if band in self.cfg.static_bands:
            return self.files[(band, None)]
        if not self.cfg.first_year <= year <= self.cfg.last_year:
            raise SocmapError(f"band {band} year {year}: outside data.first_year..data.last_year "
                              f"({self.cfg.first_year}..{self.cfg.last_year})")
        if (band, year) in self.files:
            return self.files[(band, year)]
        stand_in = self.missing[band][year]
        if stand_in == "mean":
            return tuple(f for (b, y), f in sorted(self.files.items(), key=lambda kv: kv[0][1] or 0) if b == band)
        return self.files[(band, stand_in)]

    def read_stack(self, years: Sequence[int], row_off: int, col_off: int, height: int, width: int,
                   bands: Optional[Sequence[str]] = None) -> np.ndarray:
        """float32 [C, height, width, T] of a window of the grid: bands in data.bands order (or `bands`),
        years as given, static bands repeated over T; NaN for nodata and beyond the raster."""
        bands = list(self.cfg.bands if bands is None else bands)
        stack = np.empty((len(bands), height, width, len(years)), dtype=np.float32)
        for c, band in enumerate(bands):
            stack[c] = np.moveaxis(self.read_years(band, years, row_off, col_off, height, width), 0, -1)
        return stack

    def read_years(self, band: str, years: Sequence[int], row_off: int, col_off: int, height: int,
                   width: int) -> np.ndarray:
        """float32 [T, height, width] of one band over `years`, each file read once however many
        years it stands for; NaN for nodata and beyond the raster."""
        if band not in self.cfg.bands:
            raise SocmapError(f"band {band}: not in data.bands ({', '.join(self.cfg.bands)})")
        # Only the part on the grid is read, the rest is NaN: GDAL warps a window that reaches beyond
        # its source with another kernel footprint, so a warped band would depend on the window.
        r0, r1 = max(row_off, 0), min(row_off + height, self.grid.height)
        c0, c1 = max(col_off, 0), min(col_off + width, self.grid.width)
        out = np.full((len(years), height, width), np.nan, dtype=np.float32)
        if r0 >= r1 or c0 >= c1:
            return out
        window = (r0, c0, r1 - r0, c1 - c0)
        sources = [self.source(band, int(year)) for year in years]
        files = list({f.path: f for s in sources for f in (s if isinstance(s, tuple) else (s,))}.values())
        # GDAL decompresses with the GIL released: read the files in threads, each its own dataset.
        with ThreadPoolExecutor(min(READ_THREADS, len(files) or 1)) as pool:
            cache = dict(zip((f.path for f in files), pool.map(lambda f: self._read_file(f, *window), files)))
        for t, source in enumerate(sources):
            out[t, r0 - row_off:r1 - row_off, c0 - col_off:c1 - col_off] = self._read_source(source, window, cache)
        return out

    def fill_value(self, band: str) -> float:
        """The mean of all valid grid pixels of a band over its files; each file read (whole) only if
        no whole-grid read of it has been seen yet."""
        total, count = 0.0, 0
        for f in (f for (b, _), f in sorted(self.files.items(), key=lambda kv: kv[0][1] or 0) if b == band):
            if f.path not in self._stats:
                self._read_file(f, 0, 0, self.grid.height, self.grid.width)
            s, n = self._stats[f.path]
            total, count = total + s, count + n
        if count == 0:
            log.warning("band %s: no valid pixel on the grid; its fill value is 0", band)
        return total / count if count else 0.0

    def _read_source(self, source, window: tuple[int, int, int, int], cache: dict) -> np.ndarray:
        if isinstance(source, tuple):
            key = ("mean",) + tuple(f.path for f in source)
            if key not in cache:
                arrays = [self._read_source(f, window, cache) for f in source]
                count = sum((~np.isnan(a)).astype(np.int32) for a in arrays)
                total = sum(np.nan_to_num(a, nan=0.0).astype(np.float64) for a in arrays)
                with np.errstate(invalid="ignore", divide="ignore"):
                    cache[key] = np.where(count > 0, total / count, np.nan).astype(np.float32)
            return cache[key]
        if source.path not in cache:
            cache[source.path] = self._read_file(source, *window)
        return cache[source.path]

    def _read_file(self, f: RasterFile, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """float32 [height, width] of a window of the grid from one file, NaN where nodata or off the file."""
        out = np.full((height, width), np.nan, dtype=np.float32)
        try:
            ds = self._dataset(f.path)
            if f.offset is not None:
                # A plain window read, clipped to the file and padded with numpy: boundless reads are slow.
                r0, c0 = row_off + f.offset[0], col_off + f.offset[1]
                rs, re = max(r0, 0), min(r0 + height, f.grid.height)
                cs, ce = max(c0, 0), min(c0 + width, f.grid.width)
                if rs < re and cs < ce:
                    data = ds.read(1, window=Window(cs, rs, ce - cs, re - rs), out_dtype=np.float32)
                    if f.nodata is not None and not np.isnan(f.nodata):
                        data[data == np.float32(f.nodata)] = np.nan
                    out[rs - r0:re - r0, cs - c0:ce - c0] = data
            else:
                reproject(source=rasterio.band(ds, 1), destination=out, src_transform=f.grid.transform,
                          src_crs=f.grid.crs, src_nodata=f.nodata,
                          dst_transform=self.grid.window_transform(row_off, col_off), dst_crs=self.grid.crs,
                          dst_nodata=np.nan, resampling=self.resampling)
        except (RasterioError, OSError) as exc:
            raise SocmapError(f"{f.label}: cannot read the file ({_gdal_reason(exc)}); a corrupt or cut-short "
                              "copy? Replace it (export it again, or `dvc pull`)") from None
        if (row_off, col_off, height, width) == (0, 0, self.grid.height, self.grid.width) \
                and f.path not in self._stats:
            valid = out[~np.isnan(out)]
            self._stats[f.path] = (float(valid.sum(dtype=np.float64)), int(valid.size))
        return out

    def _dataset(self, path: str) -> rasterio.DatasetReader:
        """The open dataset of `path` in this process (GDAL handles must not cross a fork)."""
        if self._pid != os.getpid():
            self._datasets, self._pid = {}, os.getpid()
        if path not in self._datasets:
            self._datasets[path] = rasterio.open(path)
        return self._datasets[path]

    def close(self) -> None:
        """Close the datasets this process opened."""
        for ds in self._datasets.values():
            ds.close()
        self._datasets = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_datasets"] = {}
        return state


def _header(path: Path, band: str, year: Optional[int]) -> dict:
    """CRS, transform, shape, nodata, dtype and the open dataset of one file; `SocmapError` if it
    cannot be read."""
    what = f"band {band} {'static' if year is None else f'year {year}'}"
    try:
        ds = rasterio.open(path)
        header = {"path": str(path), "crs": ds.crs, "transform": ds.transform, "width": ds.width,
                  "height": ds.height, "nodata": ds.nodata, "dtype": ds.dtypes[0], "count": ds.count,
                  "dataset": ds}
    except (RasterioError, OSError) as exc:
        raise SocmapError(f"{path} ({what}): not a readable raster (corrupt or not a GeoTIFF?): {exc}") from None
    problem = ("the file has no CRS; set one (e.g. gdal_edit.py -a_srs EPSG:25832)" if header["crs"] is None
               else f"data type {header['dtype']} is not numeric" if np.dtype(header["dtype"]).kind not in "iuf"
               else None)
    if problem:
        ds.close()
        raise SocmapError(f"{path} ({what}): {problem}")
    if header["count"] > 1:
        log.warning("%s has %d bands; socmap reads band 1", path, header["count"])
    return header


def _gdal_reason(exc: BaseException) -> str:
    """GDAL's own words for a failed read: rasterio's message only points to the error it chained."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


def _alignment(h: dict, grid: GridSpec) -> tuple[Optional[tuple[int, int]], list[str]]:
    """The offset of a file on the grid (None if it must be warped) and how it differs from the grid."""
    t, g = h["transform"], grid.transform
    reasons = []
    if h["crs"] != grid.crs:
        reasons.append("crs")
    tol_x, tol_y = ALIGN_TOLERANCE * abs(g.a), ALIGN_TOLERANCE * abs(g.e)
    same_res = abs(t.a - g.a) <= tol_x and abs(t.e - g.e) <= tol_y and t.b == g.b == 0 and t.d == g.d == 0
    if not same_res:
        reasons.append("resolution")
    col_shift, row_shift = (g.c - t.c) / g.a, (g.f - t.f) / g.e
    on_grid = max(abs(col_shift - round(col_shift)), abs(row_shift - round(row_shift))) <= ALIGN_TOLERANCE
    if not on_grid:
        reasons.append("pixel alignment")
    if (round(col_shift), round(row_shift), h["width"], h["height"]) != (0, 0, grid.width, grid.height) \
            and "resolution" not in reasons:
        reasons.append("extent")
    if "crs" in reasons or not same_res or not on_grid:
        return None, reasons
    return (int(round(row_shift)), int(round(col_shift))), reasons


def _nearest(year: int, found: list[int]) -> int:
    """The available year closest to `year`; the earlier one on a tie."""
    return min(found, key=lambda y: (abs(y - year), y))
