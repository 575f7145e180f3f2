"""Cloud-Optimized GeoTIFFs of the maps, written as the blocks stream in.

Per map year, `soc_{year}.tif` holds float32 bands: the ensemble mean, the ensemble standard
deviation (between the run checkpoints), the lower and upper bounds of the calibrated prediction
interval (`socmap.intervals.prediction_interval`), the dissimilarity index and the area of
applicability (1 inside, 0 outside; `socmap.applicability`). With two or more years,
`soc_change_{first}_{last}.tif` holds the mean over the ensemble of each member's change (last minus
first), its standard deviation, the interval of the change (`socmap.correlation.YearError`), whether
the change is detectable (1: the interval excludes 0), the larger DI of the two years and the AOA of
both. A block's results go straight to a tiled GeoTIFF on disk, which is copied into a COG (with
overviews) at the end, so memory stays one block's.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
import rasterio.shutil

from socmap.blocks import Window
from socmap.grid import NODATA, GridSpec
from socmap.io import atomic_path
from socmap.metrics import UNIT

COG_BLOCK = 256  # pixels per side of a COG tile (and of the overviews' smallest level)
GDAL_CACHE_MB = 64  # GDAL's block cache is a share of RAM by default; a fixed cap keeps memory flat


DISSIMILARITY = "dissimilarity index (DI)"
APPLICABLE = "area of applicability (1 inside, 0 outside)"


def band_descriptions(years: Sequence[int], interval: float, applicability: bool = False,
                      change_interval: bool = False) -> dict[str, list[str]]:
    """Output name -> the description of each of its bands; a band is in g/kg when its description starts
    with "SOC" (`band_unit`).

    Args:
        applicability: whether the maps carry the DI and AOA bands; change_interval: whether the change
            map carries its interval and detectability.
    """
    nominal = f"{interval:.0%}"
    extra = [DISSIMILARITY, APPLICABLE] if applicability else []
    out = {f"soc_{year}": ["SOC mean", "SOC ensemble std", f"SOC {nominal} interval lower",
                           f"SOC {nominal} interval upper", *extra] for year in years}
    if len(years) >= 2:
        span = f"{years[0]}-{years[-1]}"
        interval_bands = [f"SOC change {span} {nominal} interval lower", f"SOC change {span} {nominal} interval upper",
                          f"change {span} detectable at {nominal} (1: the interval excludes 0)"]
        both = [f"{DISSIMILARITY}, the larger of {years[0]} and {years[-1]}", f"{APPLICABLE} in both years"]
        out[f"soc_change_{years[0]}_{years[-1]}"] = [f"SOC change {span} mean", f"SOC change {span} ensemble std",
                                                      *(interval_bands if change_interval else []),
                                                      *(both if applicability else [])]
    return out


def band_unit(description: str) -> str:
    """g/kg for the SOC bands; the DI and the 0/1 bands have none."""
    return UNIT if description.startswith("SOC") else ""


def write_maps(results: Iterator[tuple[Window, dict[str, np.ndarray]]], grid: GridSpec, window: Window,
               out_dir: str | Path, descriptions: dict[str, list[str]], tags: dict[str, str]) -> list[Path]:
    """Write streamed blocks into one COG per output name, the folder `out_dir` as a whole (atomically:
    an interrupted map leaves the last complete maps); return the paths.

    Blocks go to an uncompressed tiled GeoTIFF on disk as they come; once all are in, GDAL's COG
    driver copies it into the compressed, tiled COG with overviews.
    """
    out_dir = Path(out_dir)
    profile = dict(driver="GTiff", width=window.width, height=window.height, dtype="float32",
                   crs=grid.crs, transform=grid.window_transform(window.row_off, window.col_off),
                   nodata=NODATA, tiled=True, blockxsize=COG_BLOCK, blockysize=COG_BLOCK, BIGTIFF="IF_SAFER")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), atomic_path(out_dir) as staged:
        scratch = staged / ".blocks"
        scratch.mkdir(parents=True)
        with contextlib.ExitStack() as stack:
            datasets = {name: stack.enter_context(rasterio.open(scratch / f"{name}.tif", "w",
                                                                count=len(names), **profile))
                        for name, names in descriptions.items()}
            for block, outputs in results:
                where = rasterio.windows.Window(block.col_off - window.col_off, block.row_off - window.row_off,
                                                block.width, block.height)
                for name, values in outputs.items():
                    datasets[name].write(values, window=where)
                del outputs, values  # not held while the next block is computed
            for name, dataset in datasets.items():
                for band, description in enumerate(descriptions[name], start=1):
                    dataset.set_band_description(band, description)
                    dataset.set_band_unit(band, band_unit(description))
                dataset.update_tags(**tags, SOCMAP_OUTPUT=name)
        for name in descriptions:
            # AVERAGE overviews skip nodata; the std overviews are averages too (fine for a quick look)
            rasterio.shutil.copy(scratch / f"{name}.tif", staged / f"{name}.tif", driver="COG", COMPRESS="DEFLATE",
                                 PREDICTOR="YES", BLOCKSIZE=COG_BLOCK, OVERVIEW_RESAMPLING="AVERAGE",
                                 BIGTIFF="IF_SAFER")
        shutil.rmtree(scratch)
    return [out_dir / f"{name}.tif" for name in descriptions]
