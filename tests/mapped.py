"""The tiny simulated world through every stage up to the maps, and the pieces the map tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from socmap import mapping
from socmap.ensemble import Ensemble
from socmap.rasters import RasterCatalog
from socmap.region import Region

YEARS = [2018, 2020]
MAP = {"train.epochs": 1, "train.hidden_size": 16, "map.years": YEARS, "map.block_size": 16,
       "split.test_block_km": 5.0}


def read(path: Path) -> tuple[np.ndarray, dict]:
    """A raster's bands and what its header says."""
    with rasterio.open(path) as src:
        return src.read(), {"profile": src.profile, "descriptions": src.descriptions, "units": src.units,
                            "tags": src.tags(), "overviews": src.overviews(1)}


def map_once(params, ensemble, calibration: dict, out_dir: Path, catalog: RasterCatalog | None = None,
             fields=(), applicability=None, correlation=None) -> list[Path]:
    """The maps of `params` (the stage's work without its fixed paths)."""
    return make_once(params, Ensemble(ensemble, calibration, fields, applicability, correlation), out_dir,
                     catalog).maps


def make_once(params, ensemble: Ensemble, out_dir: Path, catalog: RasterCatalog | None = None) -> mapping.MapOutputs:
    """Everything a map run of `params` makes with `ensemble`, the maps under `out_dir`."""
    catalog = catalog or RasterCatalog.open(params.data)
    region = Region.from_config(params.data.region)
    return mapping.make_maps(catalog, region, ensemble, params, out_dir, {"SOCMAP_TEST": "1"})
