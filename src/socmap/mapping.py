"""`socmap map`: SOC maps of the region as Cloud-Optimized GeoTIFFs, streamed block by block.

The ensemble (`socmap.ensemble`: the run checkpoints, their kriging fields and the interval
calibration) predicts every pixel of the region's window (`socmap.blocks`), and the results go into
one COG per map year and one for the change between the first and last map year (`socmap.cog`),
tagged with what made them (`socmap.provenance.map_tags`), with a preview each (`socmap.plots`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from socmap import paths
from socmap.blocks import MapPlan, map_blocks
from socmap.cog import band_descriptions, write_maps
from socmap.config import Params
from socmap.ensemble import Ensemble
from socmap.patches import channel_names
from socmap.launch import distributed
from socmap.provenance import map_tags
from socmap.rasters import RasterCatalog
from socmap.region import Region

log = logging.getLogger(__name__)

# The params that decide a map's values (with the checkpoints and the calibration). map.block_size,
# batch_size, num_processes and launch_args only decide how fast: the same map comes out.
VALUE_PARAMS = ("data.rasters", "data.grid", "data.bands", "data.static_bands", "data.first_year", "data.last_year",
                "data.region", "sample.window_size", "sample.time_before", "sample.context", "sample.fill",
                "sample.min_valid_fraction", "map.years")


def make_maps(catalog: RasterCatalog, region: Region, ensemble: Ensemble, params: Params, out_dir: str | Path,
              tags: dict[str, str]) -> list[Path]:
    """Map every year of `params.map.years` (and their change) into COGs under `out_dir`.

    Returns the paths written (on rank 0; no files and an empty list on the other ranks).
    """
    ensemble.check(channel_names(params.data.bands, params.sample.context), params.sample.window_size,
                   params.sample.time_before)
    plan = MapPlan.build(params, catalog, region)
    results = map_blocks(catalog, region, ensemble, plan)
    if distributed()[0] != 0:
        for _ in results:  # the other ranks only compute; rank 0 gathers and writes
            pass
        return []
    descriptions = band_descriptions(plan.years, float(ensemble.calibration["interval"]))
    return write_maps(results, catalog.grid, plan.window, out_dir, descriptions, tags)


def preview_title(name: str, members: int, time_before: int) -> str:
    """The title of a map's preview, from the map's name (soc_{year} or soc_change_{first}_{last})."""
    if name.startswith("soc_change_"):
        first, last = name.split("_")[2:]
        return f"SOC change {first} to {last}, topsoil 0-20 cm ({members}-model ensemble)"
    year = int(name.split("_")[1])
    return (f"SOC {year}, topsoil 0-20 cm (window {year - time_before + 1}-{year}, "
            f"{members}-model ensemble)")


def main(params: Params) -> None:
    """`socmap map`: models/ + data/evaluate/ + rasters -> data/maps/*.tif, previews in plots/map/."""
    from accelerate import PartialState

    from socmap.launch import relaunch
    from socmap.plots import preview

    if relaunch("map", params.map.num_processes, params.map.launch_args, params):
        return
    state = PartialState()  # forms the process group when launched; a no-op in a single process
    ensemble = Ensemble.load(device=state.device)
    catalog = RasterCatalog.open(params.data)
    region = Region.from_config(params.data.region)
    tags = map_tags([member.source for member in ensemble.members], params, VALUE_PARAMS, ensemble.calibration,
                    paths.KRIGING_FIELDS)
    written: Sequence[Path] = make_maps(catalog, region, ensemble, params, paths.MAPS, tags)
    if not state.is_main_process:
        return
    outline = region.outline(catalog.grid.crs)
    for path in written:
        preview(path, paths.MAP_PLOTS / f"{path.stem}.png", outline,
                preview_title(path.stem, len(ensemble), params.sample.time_before))
    log.info("wrote %s", ", ".join(str(p) for p in written))
