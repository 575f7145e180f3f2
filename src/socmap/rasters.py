"""The raster catalog: every band-year layer found (`socmap.sources`), checked and aligned onto one grid.

The grid is the analysis grid: the reference band's (`data.rasters.reference`, by default the first
yearly band's), or another CRS, pixel size or extent that `data.grid` asks for. A layer on the grid
(same CRS and pixel size, its origin a whole number of pixels away) is read through a shifted
window; any other (another CRS, resolution or pixel phase, EPSG:4326 exports from Google Earth
Engine included) through a warped view of its source onto the grid (a GDAL WarpedVRT, with
`data.rasters.resampling`: no copy on disk, and a pixel's value does not depend on the window that
reads it). Windows may reach beyond the grid or the file: pixels there, and nodata pixels, come
back as NaN. Datasets are opened lazily, once per process, so a catalog can be handed to workers.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from socmap.config import DataConfig, GridConfig
from socmap.errors import SocmapError
from socmap.grid import GridSpec
from socmap.sources import ALIGN_TOLERANCE, find_layers

log = logging.getLogger(__name__)

READ_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class RasterFile:
    """One band-year (or static) layer of a source and how it lines up with the grid."""

    path: str  # the file, or the pattern of a mosaic's tiles (what a person reads)
    source: str  # what GDAL opens: the file, or the mosaic's VRT XML
    layer: int  # 1-based band index in the source
    band: str
    year: Optional[int]  # None: a static band
    grid: GridSpec  # the source's own grid
    nodata: Optional[float]
    offset: Optional[tuple[int, int]]  # (row, col) in this file of the grid's pixel (0, 0); None: warped

    @property
    def key(self) -> tuple[str, int]:
        """What identifies the layer's values: its source and layer (several bands may share a file)."""
        return self.source, self.layer

    @property
    def label(self) -> str:
        return f"band {self.band} {'static' if self.year is None else f'year {self.year}'} ({self.path})"


class RasterCatalog:
    """Every raster of `data.bands` over `data.first_year`..`data.last_year`, on one analysis grid."""

    def __init__(self, cfg: DataConfig, grid: GridSpec, files: dict, missing: dict, warped: list,
                 shifted: list):
        self.cfg = cfg
        self.grid = grid
        self.files = files  # (band, year or None) -> RasterFile
        self.missing = missing  # band -> {year: source year, or "mean"}
        self.warped = warped  # report entries of layers warped onto the grid
        self.shifted = shifted  # report entries of layers on the grid with another extent
        self.resampling = Resampling[cfg.rasters.resampling]
        self._stats: dict[tuple[str, int], tuple[float, int]] = {}  # layer key -> (sum, count) of valid pixels
        self._datasets: dict[str, rasterio.DatasetReader] = {}
        self._views: dict[tuple[str, Optional[float]], WarpedVRT] = {}  # warped views onto the grid
        self._pid = os.getpid()

    # ------------------------------------------------------------------ opening and checks

    @classmethod
    def open(cls, data_cfg: DataConfig) -> "RasterCatalog":
        """Find and check every layer; raise `SocmapError` naming the first missing or unreadable one."""
        found, missing = find_layers(data_cfg)
        reference = data_cfg.rasters.reference or (data_cfg.yearly_bands or data_cfg.bands)[0]
        ref_key = min((k for k in found if k[0] == reference), key=lambda k: k[1] or 0)
        grid = analysis_grid(found[ref_key][0], data_cfg.grid, reference)
        files, warped, shifted = {}, [], []
        for key, (h, layer) in found.items():
            offset, reasons = _alignment(h, grid)
            files[key] = RasterFile(h["source"].name, h["source"].path, layer, key[0], key[1],
                                    GridSpec(h["crs"], h["transform"], h["width"], h["height"]),
                                    h["nodata"][layer - 1], offset)
            entry = {"band": key[0], "year": key[1], "path": h["source"].name, "crs": h["crs"].to_string(),
                     "res": [abs(h["transform"].a), abs(h["transform"].e)], "shape": [h["height"], h["width"]],
                     **({"layer": layer} if h["count"] > 1 else {}),
                     **({"tiles": h["source"].tiles} if h["source"].tiles > 1 else {})}
            if offset is None:
                warped.append({**entry, "differs_in": reasons, "resampling": data_cfg.rasters.resampling})
            elif reasons:
                shifted.append({**entry, "offset": list(offset)})
        if warped:
            log.info("%d raster(s) warped onto the %s grid with %s resampling: %s", len(warped),
                     grid.crs.to_string(), data_cfg.rasters.resampling,
                     ", ".join(sorted({f"{w['band']} ({'/'.join(w['differs_in'])})" for w in warped})))
        catalog = cls(data_cfg, grid, files, missing, warped, shifted)
        # Keep the datasets the checks opened: this process may read them (a fork or pickle drops them).
        catalog._datasets = {h["source"].path: h["dataset"] for h, _ in found.values()}
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
        files = list({f.key: f for s in sources for f in (s if isinstance(s, tuple) else (s,))}.values())
        # GDAL decompresses with the GIL released: read the files in threads, each its own dataset (a
        # band's layers lie in as many files as years).
        with ThreadPoolExecutor(min(READ_THREADS, len(files) or 1)) as pool:
            cache = dict(zip((f.key for f in files), pool.map(lambda f: self._read_file(f, *window), files)))
        for t, source in enumerate(sources):
            out[t, r0 - row_off:r1 - row_off, c0 - col_off:c1 - col_off] = self._read_source(source, window, cache)
        return out

    def fill_value(self, band: str) -> float:
        """The mean of all valid grid pixels of a band over its files; each file read (whole) only if
        no whole-grid read of it has been seen yet."""
        total, count = 0.0, 0
        for f in (f for (b, _), f in sorted(self.files.items(), key=lambda kv: kv[0][1] or 0) if b == band):
            if f.key not in self._stats:
                self._read_file(f, 0, 0, self.grid.height, self.grid.width)
            s, n = self._stats[f.key]
            total, count = total + s, count + n
        if count == 0:
            log.warning("band %s: no valid pixel on the grid; its fill value is 0", band)
        return total / count if count else 0.0

    def _read_source(self, source, window: tuple[int, int, int, int], cache: dict) -> np.ndarray:
        if isinstance(source, tuple):
            key = ("mean",) + tuple(f.key for f in source)
            if key not in cache:
                arrays = [self._read_source(f, window, cache) for f in source]
                count = sum((~np.isnan(a)).astype(np.int32) for a in arrays)
                total = sum(np.nan_to_num(a, nan=0.0).astype(np.float64) for a in arrays)
                with np.errstate(invalid="ignore", divide="ignore"):
                    cache[key] = np.where(count > 0, total / count, np.nan).astype(np.float32)
            return cache[key]
        if source.key not in cache:
            cache[source.key] = self._read_file(source, *window)
        return cache[source.key]

    def _read_file(self, f: RasterFile, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """float32 [height, width] of a window on the grid from one layer, NaN where nodata or off the file."""
        out = np.full((height, width), np.nan, dtype=np.float32)
        try:
            if f.offset is not None:
                # A plain window read, clipped to the file and padded with numpy: boundless reads are slow.
                r0, c0 = row_off + f.offset[0], col_off + f.offset[1]
                rs, re = max(r0, 0), min(r0 + height, f.grid.height)
                cs, ce = max(c0, 0), min(c0 + width, f.grid.width)
                if rs < re and cs < ce:
                    data = self._dataset(f.source).read(f.layer, window=Window(cs, rs, ce - cs, re - rs),
                                                        out_dtype=np.float32)
                    if f.nodata is not None and not np.isnan(f.nodata):
                        data[data == np.float32(f.nodata)] = np.nan
                    out[rs - r0:re - r0, cs - c0:ce - c0] = data
            else:
                self._read_warped(f, row_off, col_off, height, width, out)
        except (RasterioError, OSError) as exc:
            raise SocmapError(f"{f.label}: cannot read the file ({_gdal_reason(exc)}); a corrupt or cut-short "
                              "copy? Replace it (export it again, or `dvc pull`)") from None
        if (row_off, col_off, height, width) == (0, 0, self.grid.height, self.grid.width) \
                and f.key not in self._stats:
            valid = out[~np.isnan(out)]
            self._stats[f.key] = (float(valid.sum(dtype=np.float64)), int(valid.size))
        return out

    def _read_warped(self, f: RasterFile, row_off: int, col_off: int, height: int, width: int,
                     out: np.ndarray) -> None:
        """A window of a layer's warped view into `out`, read one whole block of the view at a time.

        GDAL warps each request as one chunk, and a downsampling kernel's footprint follows the chunk's
        scale, so other windows would give a pixel values a few 1e-4 apart; fixed blocks give each pixel
        one value, whatever window asks for it (a map block and the sample stage's whole grid alike).
        """
        view = self._view(f)
        block_h, block_w = view.block_shapes[f.layer - 1]
        for r in range(row_off // block_h * block_h, row_off + height, block_h):
            for c in range(col_off // block_w * block_w, col_off + width, block_w):
                h, w = min(block_h, self.grid.height - r), min(block_w, self.grid.width - c)
                block = view.read(f.layer, window=Window(c, r, w, h), out_dtype=np.float32)
                r0, r1 = max(r, row_off), min(r + h, row_off + height)
                c0, c1 = max(c, col_off), min(c + w, col_off + width)
                out[r0 - row_off:r1 - row_off, c0 - col_off:c1 - col_off] = block[r0 - r:r1 - r, c0 - c:c1 - c]

    def _dataset(self, path: str) -> rasterio.DatasetReader:
        """The open dataset of `path` (a file or a mosaic's XML) in this process (GDAL handles must not
        cross a fork)."""
        if self._pid != os.getpid():
            self._datasets, self._views, self._pid = {}, {}, os.getpid()
        if path not in self._datasets:
            self._datasets[path] = rasterio.open(path)
        return self._datasets[path]

    def _view(self, f: RasterFile) -> WarpedVRT:
        """The warped view of a layer's source onto the whole grid, float32 with NaN for nodata; one per
        source and process, so that GDAL's block cache keeps what it has warped."""
        dataset = self._dataset(f.source)
        key = (f.source, f.nodata)
        if key not in self._views:
            self._views[key] = WarpedVRT(dataset, crs=self.grid.crs, transform=self.grid.transform,
                                         width=self.grid.width, height=self.grid.height, src_nodata=f.nodata,
                                         nodata=np.nan, dtype="float32", resampling=self.resampling)
        return self._views[key]

    def close(self) -> None:
        """Close the views and datasets this process opened."""
        for view in self._views.values():
            view.close()
        for ds in self._datasets.values():
            ds.close()
        self._views, self._datasets = {}, {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_datasets"], state["_views"] = {}, {}
        return state


def analysis_grid(head: dict, cfg: GridConfig, reference: str) -> GridSpec:
    """The grid every layer is read onto: the reference layer's own, with `data.grid`'s CRS, pixel size
    and extent in place of its own where they are set."""
    own = GridSpec(head["crs"], head["transform"], head["width"], head["height"])
    crs = CRS.from_user_input(cfg.crs) if cfg.crs is not None else own.crs
    if crs == own.crs and cfg.resolution is None and cfg.extent is None:
        return own
    if cfg.resolution is None and crs != own.crs:
        suggested = calculate_default_transform(own.crs, crs, own.width, own.height, *own.bounds)[0].a
        raise SocmapError(f"data.grid.crs = {cfg.crs}: another CRS than the reference band {reference}'s "
                          f"({own.crs.to_string()}); set data.grid.resolution, the pixel size in units of "
                          f"{cfg.crs} (the reference's pixels are about {suggested:.4g} there)")
    return own.regridded(crs, cfg.resolution, cfg.extent)


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

