"""`socmap map`: SOC maps of the region as Cloud-Optimized GeoTIFFs, streamed block by block.

The ensemble (`socmap.ensemble`: the run checkpoints, their kriging fields, the interval
calibration, the dissimilarity index's reference and the errors places and years share) predicts
every pixel of the region's window (`socmap.blocks`), and the results go into one COG per map year
and one for the change between the first and last map year (`socmap.cog`), tagged with what made
them (`socmap.provenance.map_tags`), with a preview each (`socmap.plots`); the mean of each polygon
of `map.polygons` with its interval (`socmap.zonal`) into a CSV and a choropleth per map year; the
share of mapped pixels inside the area of applicability into metrics/map.json.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from socmap import paths
from socmap.blocks import MapPlan, Window, map_blocks
from socmap.cog import APPLICABLE, band_descriptions, write_maps
from socmap.config import Params
from socmap.ensemble import Ensemble
from socmap.grid import NODATA
from socmap.io import atomic_path, write_json
from socmap.launch import distributed
from socmap.patches import channel_names
from socmap.provenance import map_tags
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.zonal import SUMS, Polygons, add_sums, polygon_table

log = logging.getLogger(__name__)

# The params that decide a map's values (with the checkpoints and the calibration). map.block_size,
# batch_size, num_processes and launch_args only decide how fast: the same map comes out.
VALUE_PARAMS = ("data.rasters", "data.grid", "data.bands", "data.static_bands", "data.first_year", "data.last_year",
                "data.region", "sample.window_size", "sample.time_before", "sample.context", "sample.fill",
                "sample.min_valid_fraction", "map.years")


@dataclass(frozen=True)
class MapOutputs:
    """What a map run made: the COGs written, each map year's polygon table, the figures for metrics/map.json."""

    maps: list[Path]
    polygons: dict[int, pd.DataFrame]  # map year -> one row per polygon; empty without map.polygons
    zones: Polygons | None  # the polygons on the grid (None: none)
    tally: Tally | None  # per output: where its AOA band is, the pixels counted
    metrics: dict


class Tally:
    """Per output: the pixels mapped, inside the area of applicability and (change) with a detectable change."""

    def __init__(self, descriptions: dict[str, list[str]]):
        def first(names: list[str], match) -> int | None:
            return next((i for i, name in enumerate(names) if match(name)), None)

        self.bands = {name: (first(names, lambda d: d.startswith(APPLICABLE)),
                             first(names, lambda d: "detectable" in d)) for name, names in descriptions.items()}
        self.counts = {name: np.zeros(3, dtype=np.int64) for name in descriptions}

    def add(self, outputs: dict[str, np.ndarray]) -> None:
        for name, values in outputs.items():
            aoa, detectable = self.bands[name]
            self.counts[name] += [(values[0] != NODATA).sum(), 0 if aoa is None else (values[aoa] == 1).sum(),
                                  0 if detectable is None else (values[detectable] == 1).sum()]

    def metrics(self, ensemble: Ensemble) -> dict:
        """The AOA threshold and the share of mapped pixels inside it (over every map year) at the top;
        per output its pixels, share inside and (change) share detectable."""
        maps = {}
        for name, (pixels, inside, detectable) in self.counts.items():
            aoa, change = self.bands[name]
            maps[name] = {"pixels": int(pixels),
                          **({"aoa_inside": inside / max(pixels, 1)} if aoa is not None else {}),
                          **({"detectable": detectable / max(pixels, 1)} if change is not None else {})}
        if ensemble.applicability is None:
            return {"maps": maps}
        years = [counts for name, counts in self.counts.items() if not name.startswith("soc_change_")]
        pixels, inside = sum(c[0] for c in years), sum(c[1] for c in years)
        return {"aoa_threshold": ensemble.applicability.threshold, "aoa_inside": inside / max(pixels, 1),
                "maps": maps}


def tallied(results: Iterator[tuple[Window, dict]], tally: Tally,
            sums: dict) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
    """The blocks' bands, as they stream to the COGs, counted into `tally`; their polygon sums into `sums`."""
    for block, outputs in results:
        add_sums(sums, outputs.pop(SUMS, {}))
        tally.add(outputs)
        yield block, outputs


def make_maps(catalog: RasterCatalog, region: Region, ensemble: Ensemble, params: Params, out_dir: str | Path,
              tags: dict[str, str]) -> MapOutputs:
    """Map every year of `params.map.years` (and their change) into COGs under `out_dir`, the means of
    `params.map.polygons` alongside (an ensemble without shared errors, built by hand, maps no polygons).

    Returns what was written (on rank 0; nothing on the other ranks).
    """
    ensemble.check(channel_names(params.data.bands, params.sample.context), params.sample.window_size,
                   params.sample.time_before)
    plan = MapPlan.build(params, catalog, region)
    if ensemble.correlation is None:
        plan = dataclasses.replace(plan, polygons=None)
    results = map_blocks(catalog, region, ensemble, plan)
    if distributed()[0] != 0:
        for _ in results:  # the other ranks only compute; rank 0 gathers and writes
            pass
        return MapOutputs([], {}, None, None, {})
    descriptions = band_descriptions(plan.years, float(ensemble.calibration["interval"]),
                                     ensemble.applicability is not None, ensemble.correlation is not None)
    tally, sums = Tally(descriptions), {}
    written = write_maps(tallied(results, tally, sums), catalog.grid, plan.window, out_dir, descriptions, tags)
    tables = {} if plan.polygons is None else {
        year: polygon_table(plan.polygons, sums.get(year, {}), ensemble.correlation, ensemble.calibration,
                            ensemble.fields, ensemble.applicability is not None) for year in plan.years}
    metrics = {**tally.metrics(ensemble), "polygons": {"file": params.map.polygons,
                                                       "count": 0 if plan.polygons is None else len(plan.polygons)}}
    return MapOutputs(written, tables, plan.polygons, tally, metrics)


def write_polygons(made: MapOutputs, outline: list, interval: float, out_dir: str | Path,
                   plots_dir: str | Path) -> list[Path]:
    """Each map year's polygon table as `soc_{year}.csv` (the folder written whole, empty without
    polygons) and its choropleth `polygons_{year}.png`; returns the tables' paths."""
    from socmap.plots import plot_polygons

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for year, table in made.polygons.items():
            table.to_csv(tmp / f"soc_{year}.csv", index=False)
    for year, table in made.polygons.items():
        plot_polygons(table, made.zones.shapes, outline, Path(plots_dir) / f"polygons_{year}.png",
                      f"Mean SOC {year} by polygon, with its {interval:.0%} interval")
    return [Path(out_dir) / f"soc_{year}.csv" for year in made.polygons]


def preview_title(name: str, members: int, time_before: int) -> str:
    """The title of a map's preview, from the map's name (soc_{year} or soc_change_{first}_{last})."""
    if name.startswith("soc_change_"):
        first, last = name.split("_")[2:]
        return f"SOC change {first} to {last}, topsoil 0-20 cm ({members}-model ensemble)"
    year = int(name.split("_")[1])
    return (f"SOC {year}, topsoil 0-20 cm (window {year - time_before + 1}-{year}, "
            f"{members}-model ensemble)")


def main(params: Params) -> None:
    """`socmap map`: models/ + data/evaluate/ + rasters -> data/maps/*.tif, data/polygons/*.csv, previews and
    choropleths in plots/map/, metrics/map.json."""
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
    made = make_maps(catalog, region, ensemble, params, paths.MAPS, tags)
    if not state.is_main_process:
        return
    outline = region.outline(catalog.grid.crs)
    for path in made.maps:
        aoa = made.tally.bands[path.stem][0]
        preview(path, paths.MAP_PLOTS / f"{path.stem}.png", outline,
                preview_title(path.stem, len(ensemble), params.sample.time_before), None if aoa is None else aoa + 1)
    tables = write_polygons(made, outline, ensemble.calibration["interval"], paths.POLYGON_MEANS, paths.MAP_PLOTS)
    write_json(paths.MAP_METRICS, made.metrics)
    log.info("wrote %s", ", ".join(str(p) for p in [*made.maps, *tables, paths.MAP_METRICS]))
