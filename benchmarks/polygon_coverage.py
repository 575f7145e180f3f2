"""Do the polygon means' intervals cover the true means? The default world's map against its truth.

After `dvc repro` on a simulated world (the default: data/synthetic), the pipeline's own ensemble,
calibration, kriging fields, applicability reference and error correlation map the world's
`map.years[-1]` once more, with `--polygons` random squares (sides log-uniform between 1 and 15 km,
districts down to farms, anywhere on the grid) in place of `map.polygons`, through
`socmap.mapping.make_maps` as `socmap map` does. Each polygon's true mean is the mean of the
simulator's noise-free SOC (`socmap.simulate.pixel_truth`) over the polygon's mapped pixels. Figures:

- coverage: the share of polygons whose `[lower, upper]` holds the true mean, at the nominal level
  `evaluate.interval`, with a binomial 95 % band beside it;
- rms_z: the root mean square of (truth − mean) / std: 1 when the polygons' sd is right;
- naive_coverage: the same interval from independent pixel errors (σ / √n and the members' spread),
  which is what counting the spatially correlated error avoids;
- by_size: coverage for polygons of up to 30, 30–150 and over 150 pixels.

Nothing is chosen from these figures: they check the interval construction of the map stage.

    .venv/bin/python benchmarks/polygon_coverage.py [--polygons 300] [--seed 0]

The last line printed is one JSON object; `cpu` names the machine (`machine.cpu_note`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyogrio
import rasterio
import shapely

from socmap import paths
from socmap.config import load_params, replace
from socmap.correlation import normal_quantile
from socmap.ensemble import Ensemble
from socmap.mapping import make_maps
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.simulate import pixel_truth

from machine import cpu_note

ROOT = Path(__file__).resolve().parents[1]
SIDE_KM = (1.0, 15.0)
SIZES = ((0, 30), (30, 150), (150, None))


def random_squares(bounds: tuple[float, float, float, float], count: int, rng: np.random.Generator) -> list:
    """`count` squares with log-uniform sides in SIDE_KM, wholly inside `bounds` (west, south, east, north; m)."""
    west, south, east, north = bounds
    sides = 1000.0 * np.exp(rng.uniform(*np.log(SIDE_KM), count))
    x0, y0 = rng.uniform(west, east - sides), rng.uniform(south, north - sides)
    return [shapely.box(x, y, x + side, y + side) for x, y, side in zip(x0, y0, sides)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polygons", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    os.chdir(ROOT)  # the params' paths are the repository's
    params = load_params(ROOT / "params.yaml")
    year = params.map.years[-1]
    grid, truth = pixel_truth(params.simulate.world(paths.DEFAULT_WORLD), year)
    west, north = grid.transform.c, grid.transform.f
    bounds = (west, north - grid.height * grid.res[1], west + grid.width * grid.res[0], north)
    squares = random_squares(bounds, args.polygons, np.random.default_rng(args.seed))
    ensemble = Ensemble.load(device="cpu")  # the pipeline's outputs, under ROOT
    with tempfile.TemporaryDirectory(prefix="socmap-polygons-") as tmp:
        polygons = Path(tmp) / "squares.geojson"
        pyogrio.raw.write(polygons, shapely.to_wkb(squares), geometry_type="Polygon", crs=grid.crs.to_string(),
                          driver="GeoJSON", fields=["name"],
                          field_data=[np.array([f"S{i}" for i in range(len(squares))], dtype=object)])
        mapped_params = replace(params, **{"map.polygons": str(polygons), "map.years": [year]})
        made = make_maps(RasterCatalog.open(mapped_params.data), Region.from_config(mapped_params.data.region),
                         ensemble, mapped_params, Path(tmp) / "maps", {})
        with rasterio.open(made.maps[0]) as src:
            if src.transform != grid.transform or src.shape != truth.shape:
                raise SystemExit(f"{made.maps[0]}: the map is not on the world's grid; run it on a simulated world")
            mapped = src.read(1) != src.nodata
    x, y = grid.centres(0, 0, grid.height, grid.width)
    table = made.polygons[year]
    table["truth"] = [truth[mapped & shapely.intersects_xy(shape, x, y)].mean() if n else np.nan
                      for shape, n in zip(made.zones.shapes, table["pixels"])]
    scored = table[table["pixels"] > 0]
    covered = scored["truth"].between(scored["lower"], scored["upper"]).to_numpy()
    level = params.evaluate.interval
    band = 1.96 * np.sqrt(level * (1 - level) / len(scored))
    naive = normal_quantile(level) * np.sqrt(scored["pixel_std"] ** 2 / scored["pixels"]
                                             + scored["ensemble_std"] ** 2 / params.train.num_runs)
    by_size = {}
    for low, high in SIZES:
        inside = (scored["pixels"] > low) & (scored["pixels"] <= (high or np.inf))
        by_size[f"{low}-{high or ''} px"] = {"polygons": int(inside.sum()),
                                             "coverage": round(float(covered[inside.to_numpy()].mean()), 3)}
    print(json.dumps({
        "cpu": cpu_note(), "year": year, "polygons": int(len(scored)), "nominal": level,
        "coverage": round(float(covered.mean()), 3), "binomial_band": [round(level - band, 3), round(level + band, 3)],
        "rms_z": round(float(np.sqrt(np.mean(((scored["truth"] - scored["mean"]) / scored["std"]) ** 2))), 3),
        "naive_coverage": round(float(((scored["truth"] - scored["mean"]).abs() <= naive).mean()), 3),
        "by_size": by_size, "median_pixels": float(scored["pixels"].median()),
        "wall_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
