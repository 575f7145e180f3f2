"""Raster sources: the file a path pattern names, a pattern's tiles as one mosaic, layers by description.

`data.rasters.yearly` and `data.rasters.static` are patterns under `data.rasters.dir`. With `{band}`,
a file holds one band (its first layer); without, a file holds several bands as layers, each found
by its description (the band name Earth Engine and GDAL write). A `*` matches the tiles of one
export (Earth Engine's `name-0000000000-0000000000.tif`); several tiles are read as one mosaic, a
GDAL VRT whose XML GDAL opens as it is: no copy on disk, nothing to clean up.
"""

from __future__ import annotations

import glob
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import rasterio
import rasterio.dtypes
from rasterio.errors import RasterioError

from socmap.config import DataConfig
from socmap.errors import SocmapError

log = logging.getLogger(__name__)

ALIGN_TOLERANCE = 1e-6  # in pixels: closer than this counts as the same grid


@dataclass(frozen=True)
class Source:
    """One raster as GDAL opens it: a file, or the mosaic of the tiles a pattern matches."""

    name: str  # what a person reads: the file, or the pattern of the tiles
    path: str  # what GDAL opens: the file, or the VRT XML of the mosaic
    tiles: int = 1


def find_layers(cfg: DataConfig) -> tuple[dict, dict]:
    """Every layer of `data.bands`: (band, year or None for a static band) -> (header, layer), and
    band -> {year: stand-in year or "mean"} for the years a band misses. Each source is opened once
    (several bands may share it); `SocmapError` names the first band that is found nowhere."""
    root = Path(cfg.rasters.dir)
    if not root.is_dir():
        raise SocmapError(f"data.rasters.dir = {str(root)!r}: no such directory")
    sources: dict[str, Optional[Source]] = {}  # the formatted pattern -> its source
    heads: dict[str, dict] = {}  # GDAL path -> header

    def lookup(pattern: str, what: str, **fields) -> Optional[dict]:
        name = pattern.format(**fields)
        if name not in sources:
            sources[name] = find(root, pattern, **fields)
        source = sources[name]
        if source is not None and source.path not in heads:
            heads[source.path] = header(source, what)
            if "{band}" in pattern and heads[source.path]["count"] > 1:
                log.warning("%s has %d bands; socmap reads band 1", source.name, heads[source.path]["count"])
        return None if source is None else heads[source.path]

    found, missing = {}, {}
    for band in cfg.bands:
        if band in cfg.static_bands:
            found[(band, None)] = _static_layer(lookup, root, cfg.rasters.static, band)
            continue
        pattern, seen = cfg.rasters.yearly, []
        for year in cfg.years:
            what = f"band {band} year {year}"
            head = lookup(pattern, what, band=band, year=year)
            index = None if head is None else layer(head, band, "{band}" not in pattern, what)
            seen += [head] if head is not None else []
            if index is not None:
                found[(band, year)] = (head, index)
        years = sorted(y for b, y in found if b == band)
        if not years and not seen:
            example = root / pattern.format(band=band, year=cfg.first_year)
            raise SocmapError(f"band {band}: no file for any year {cfg.first_year}..{cfg.last_year} (looked for "
                              f"{example} and the like; data.rasters.yearly = {pattern!r})")
        if not years:
            raise SocmapError(f"band {band}: no layer described {band!r} in the {len(seen)} file(s) of "
                              f"data.rasters.yearly = {pattern!r} ({cfg.first_year}..{cfg.last_year}); "
                              f"descriptions present: {descriptions(seen)}")
        gaps = [y for y in cfg.years if y not in years]
        if gaps:
            mean = cfg.rasters.missing_years == "mean"
            missing[band] = {y: "mean" if mean else _nearest(y, years) for y in gaps}
            log.warning("band %s: no layer for %s; filled from %s", band, ", ".join(map(str, gaps)),
                        "the mean of its years" if mean else "the nearest year")
    return found, missing


def _static_layer(lookup, root: Path, pattern: str, band: str) -> tuple[dict, int]:
    """(header, layer) of a static band; `SocmapError` naming the pattern when it is not found."""
    what = f"static band {band}"
    head = lookup(pattern, what, band=band)
    if head is None:
        path = root / pattern.format(band=band)
        missing = f"no file matches {path}" if "*" in pattern else f"file {path} not found"
        raise SocmapError(f"static band {band}: {missing} (data.rasters.static = {pattern!r})")
    index = layer(head, band, "{band}" not in pattern, what)
    if index is None:
        raise SocmapError(f"static band {band}: no layer of {head['source'].name} is described {band!r} "
                          f"(data.rasters.static = {pattern!r}); descriptions present: {descriptions([head])}")
    return head, index


def find(root: Path, pattern: str, **fields) -> Optional[Source]:
    """The source `pattern` names under `root` with `fields` filled in; None when no file matches."""
    path = root / pattern.format(**fields)
    if "*" not in pattern:
        return Source(str(path), str(path)) if path.is_file() else None
    escaped = pattern.format(**{key: glob.escape(str(value)) for key, value in fields.items()})
    tiles = sorted(p for p in glob.glob(os.path.join(glob.escape(str(root)), escaped)) if os.path.isfile(p))
    if len(tiles) <= 1:
        return Source(tiles[0], tiles[0]) if tiles else None
    return Source(f"{path} ({len(tiles)} tiles)", mosaic(tiles, str(path)), len(tiles))


def mosaic(tiles: list[str], name: str) -> str:
    """The VRT XML of `tiles` side by side on their common pixel grid; `SocmapError` naming the first
    tile that is not on it (another CRS, pixel size, layers, data type or nodata, or a pixel phase)."""
    heads = []
    for tile in tiles:
        with _open(tile, f"tile of {name}") as ds:
            heads.append({"path": os.path.abspath(tile), "crs": ds.crs, "transform": ds.transform,
                          "width": ds.width, "height": ds.height, "count": ds.count, "dtypes": ds.dtypes,
                          "nodata": ds.nodatavals, "descriptions": ds.descriptions, "blocks": ds.block_shapes})
    first = heads[0]
    t = first["transform"]
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise SocmapError(f"{first['path']} (tile of {name}): not a north-up raster; warp it first (gdalwarp)")
    west = min(h["transform"].c for h in heads)
    north = max(h["transform"].f for h in heads)
    for h in heads:
        h["col"], h["row"] = (h["transform"].c - west) / t.a, (h["transform"].f - north) / t.e
        differs = [what for what, same in (
            ("CRS", h["crs"] == first["crs"]), ("layers", h["count"] == first["count"]),
            ("data type", h["dtypes"] == first["dtypes"]),
            ("layer descriptions", h["descriptions"] == first["descriptions"]),
            ("nodata", np.array_equal(h["nodata"], first["nodata"], equal_nan=True)),
            ("pixel size", h["transform"][:2] + h["transform"][3:5] == t[:2] + t[3:5]),
            ("pixel alignment", max(abs(h["col"] - round(h["col"])),
                                    abs(h["row"] - round(h["row"]))) <= ALIGN_TOLERANCE),
        ) if not same]
        if differs:
            raise SocmapError(f"{h['path']} (tile of {name}): its {differs[0]} differs from {first['path']}'s; "
                              "the tiles of one pattern must be parts of one export")
    width = max(round(h["col"]) + h["width"] for h in heads)
    height = max(round(h["row"]) + h["height"] for h in heads)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS").text = first["crs"].to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (west, t.a, 0.0, north, 0.0, t.e))
    for index in range(first["count"]):
        gdal_type = rasterio.dtypes.typename_fwd[rasterio.dtypes.dtype_rev[first["dtypes"][index]]]
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(index + 1))
        if first["nodata"][index] is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(first["nodata"][index]))
        if first["descriptions"][index]:
            ET.SubElement(band, "Description").text = first["descriptions"][index]
        for h in heads:
            source = ET.SubElement(band, "SimpleSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = h["path"]
            ET.SubElement(source, "SourceBand").text = str(index + 1)
            block_y, block_x = h["blocks"][index]
            ET.SubElement(source, "SourceProperties", RasterXSize=str(h["width"]), RasterYSize=str(h["height"]),
                          DataType=gdal_type, BlockXSize=str(block_x), BlockYSize=str(block_y))
            size = {"xSize": str(h["width"]), "ySize": str(h["height"])}
            ET.SubElement(source, "SrcRect", xOff="0", yOff="0", **size)
            ET.SubElement(source, "DstRect", xOff=str(round(h["col"])), yOff=str(round(h["row"])), **size)
    return ET.tostring(root, encoding="unicode")


def header(source: Source, what: str) -> dict:
    """CRS, transform, shape, layers (nodata, data type, description each) and the open dataset of a
    source; `SocmapError` naming it and `what` it stands for if it cannot be read or has no CRS."""
    ds = _open(source.path, what, source.name)
    if ds.crs is None:
        ds.close()
        raise SocmapError(f"{source.name} ({what}): the file has no CRS; set one (e.g. gdal_edit.py -a_srs "
                          "EPSG:25832)")
    return {"source": source, "crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height,
            "count": ds.count, "nodata": ds.nodatavals, "dtypes": ds.dtypes, "descriptions": ds.descriptions,
            "dataset": ds}


def layer(head: dict, band: str, by_description: bool, what: str) -> Optional[int]:
    """The 1-based layer of a source that holds `band`: the first (one band per file), or the one its
    description names (None if none does); `SocmapError` if that layer is not numeric or named twice."""
    if by_description:
        named = [i + 1 for i, d in enumerate(head["descriptions"]) if d == band]
        if len(named) > 1:
            raise SocmapError(f"{head['source'].name} ({what}): layers {named[0]} and {named[1]} are both "
                              f"described {band!r}; each band must name one layer")
        if not named:
            return None
        index = named[0]
    else:
        index = 1
    dtype = head["dtypes"][index - 1]
    if np.dtype(dtype).kind not in "iuf":
        raise SocmapError(f"{head['source'].name} ({what}): data type {dtype} is not numeric")
    return index


def descriptions(heads: list[dict]) -> str:
    """The layer descriptions found in `heads`, in order of appearance, for an error message."""
    found = list(dict.fromkeys(d for h in heads for d in h["descriptions"] if d))
    return ", ".join(found) if found else "none (the layers have no descriptions)"


def _open(path: str, what: str, name: Optional[str] = None) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise SocmapError(f"{name or path} ({what}): not a readable raster (corrupt or not a GeoTIFF?): "
                          f"{exc}") from None


def _nearest(year: int, found: list[int]) -> int:
    """The available year closest to `year`; the earlier one on a tie."""
    return min(found, key=lambda y: (abs(y - year), y))
