"""The simulated Bavaria: rasters, survey points and the noise-free truth, written like the real data.

On the landscape of `socmap.landscape` (terrain, hidden land cover, yearly bands), survey rows are
drawn as LUCAS and the state surveys sample, and soil organic carbon (g/kg) at a survey row follows

    log SOC = a[cover] + b_elev·z(elev) + b_tpi·z(TPI) + b_slope·z(slope)
              + b_hist·m(x)·z(NPP history) + b_lst·z(LST in the survey year)
              + aspect_effect·z(northness) + interaction·s[cover]·z_cover(ET in the survey year)
              + c[parent material] + r(x)
    OC      = exp(log SOC) · exp(noise·ε − noise²/2),   ε ~ N(0, 1)

where `cover` is a hidden land-cover map (cropland, grassland, forest, wetland/peat), TPI is the
elevation against its mean over `context_km`, the NPP history a weighted mean over the survey year
and the `history_years − 1` before, m(x) = 1 + nonstationary·f(x) a regional multiplier (f smooth
over ~100 km), northness the cosine of the aspect, z_cover the TotalEvapotranspiration anomaly
from its cover's mean with a sign s by cover, c an offset of hidden soil classes that the bands show
only through a signature, and r a spatially autocorrelated residual. The expectation of OC given
everything is exp(log SOC) (the truth); given the covariates alone it is exp(log SOC − r + var(r)/2).
With the default `simulate.*` the last three covariate terms are zero and m(x) = 1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer
from rasterio.warp import Resampling, reproject
import shapely
from scipy import ndimage

from socmap import paths
from socmap.config import SampleConfig, SimulateConfig
from socmap.grid import NODATA, GridSpec
from socmap.io import atomic_path, write_json
from socmap.landscape import (COVER_RELIEF_PX, COVERS, UNITS, YEARLY_BANDS, block_mean, districts, elevation,
                              land_cover, make_grids, output_grids, parent_material, regional_field, smooth_field,
                              terrain, with_signature, yearly_bands)
from socmap.paths import DEFAULT_WORLD, world_data, world_plots

log = logging.getLogger(__name__)

# log-SOC effects: cover intercepts (cropland ≈ 17 g/kg) and covariate slopes per standard deviation
COVER_EFFECT = np.log([15.0, 22.0, 27.0, 85.0])
B_ELEV, B_TPI, B_SLOPE, B_HIST, B_LST = 0.12, -0.22, -0.12, 0.3, -0.08
RESIDUAL_SD, RESIDUAL_RANGE_KM = 0.25, 12.0
# simulate.interaction: more evapotranspiration, more growth on mineral soils; drier, decaying soils
# under forest and on drained peat (sign per cover, in COVERS order)
INTERACTION_BAND = "TotalEvapotranspiration"
INTERACTION_SIGN = np.array([1.0, 0.5, -0.5, -1.0])



# ----------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    """The landscape of a world and its random stream, as the survey is about to be drawn."""

    coarse: GridSpec  # the yearly bands' grid
    fine: GridSpec  # the static band's
    years: list[int]
    elev_fine: np.ndarray
    elev: np.ndarray  # on the coarse grid
    cover: np.ndarray
    parent_offset: np.ndarray  # log-SOC offset of each pixel's hidden soil class
    bands: dict[str, np.ndarray]  # [year, height, width]
    rng: np.random.Generator


def build_world(cfg: SimulateConfig) -> World:
    """Terrain, land cover, soil classes and yearly bands of `cfg`, in the order the seed draws them."""
    rng = np.random.default_rng(cfg.seed)
    coarse, fine = make_grids(cfg)
    res = coarse.res[0]
    years = list(range(cfg.first_year, cfg.last_year + 1))
    elev_fine = elevation(fine, rng)
    elev = block_mean(elev_fine, int(round(res / fine.res[0])))
    tpi, slope, _ = terrain(elev, res, COVER_RELIEF_PX)
    cover = land_cover(elev, tpi, slope, rng, res)
    classes, offsets, signature = parent_material(cfg, elev.shape, res)
    bands = with_signature(yearly_bands(cover, elev, years, rng, res), classes, signature)
    return World(coarse, fine, years, elev_fine, elev, cover, offsets[classes], bands, rng)


def zscore(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (values - reference.mean()) / (reference.std() + 1e-12)


def history_weights(cfg: SimulateConfig) -> np.ndarray:
    """Weight of the survey year (index 0) and of each year before it in the NPP history, summing to 1:
    uniform, or `recent` w_k ∝ 2^−k (k years before the survey: each year counts half the one after)."""
    if cfg.history_weighting == "uniform":
        return np.full(cfg.history_years, 1.0 / cfg.history_years)
    weights = 0.5 ** np.arange(cfg.history_years)
    return weights / weights.sum()


def npp_history(npp: np.ndarray, t: np.ndarray, row: np.ndarray, col: np.ndarray,
                cfg: SimulateConfig) -> np.ndarray:
    """z of each row's NPP history against the histories of every pixel in every year that has a full one."""
    n = cfg.history_years
    past = np.stack([npp[np.clip(t - k, 0, None), row, col] for k in range(n)])  # [years before, rows]
    origin = (n - 1) // 2  # shifts each window back so that it ends at its year
    if cfg.history_weighting == "uniform":
        history = past.mean(axis=0)
        windows = ndimage.uniform_filter1d(npp, n, axis=0, origin=origin)
    else:
        weights = history_weights(cfg)
        history = np.tensordot(weights, past, axes=1)
        windows = ndimage.correlate1d(npp, weights[::-1], axis=0, origin=origin)
    return zscore(history, windows[n - 1:])


def cover_anomaly(values: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """A [year, height, width] band minus its mean over its pixels' cover, in standard deviations."""
    means = np.array([values[:, cover == c].mean() if (cover == c).any() else 0.0 for c in range(len(COVERS))])
    anomaly = values - means[cover]
    return anomaly / (anomaly.std() + 1e-12)


# ------------------------------------------------------------------------------ surveys


def survey_sites(cfg: SimulateConfig, grid: GridSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Survey rows inside the bbox: LUCAS-like sites revisited in `lucas_years` under one POINTID
    (GPS a few metres apart), and state-survey sites clustered, revisited in random years at the
    same coordinates under new ids."""
    to_lonlat = Transformer.from_crs(grid.crs.to_string(), "EPSG:4326", always_xy=True)
    west, south, east, north = cfg.bbox
    years = np.arange(cfg.first_year, cfg.last_year + 1)
    n_lucas = int(round(cfg.sites * cfg.lucas_share))
    n_state = cfg.sites - n_lucas
    res, grid_west, grid_north = grid.res[0], grid.transform.c, grid.transform.f
    width_m, height_m = grid.width * res, grid.height * res

    def inside(n: int, centre_fn) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = np.empty(0), np.empty(0)
        while xs.size < n:
            x, y = centre_fn(4 * n + 16)
            lon, lat = to_lonlat.transform(x, y)
            ok = (lon > west) & (lon < east) & (lat > south) & (lat < north)
            xs, ys = np.concatenate([xs, x[ok]]), np.concatenate([ys, y[ok]])
        return xs[:n], ys[:n]

    uniform = lambda m: (grid_west + rng.uniform(0, width_m, m), grid_north - rng.uniform(0, height_m, m))  # noqa: E731
    n_clusters = max(1, n_state // 40)
    cx, cy = inside(n_clusters, uniform)
    spread = min(6000.0, 0.15 * min(width_m, height_m))

    def clustered(m: int):
        k = rng.integers(0, n_clusters, m)
        return cx[k] + rng.normal(0, spread, m), cy[k] + rng.normal(0, spread, m)

    lx, ly = inside(n_lucas, uniform)
    sx, sy = inside(n_state, clustered)
    rows = []
    lucas_years = [y for y in cfg.lucas_years if cfg.first_year <= y <= cfg.last_year] or [int(years[-1])]
    for i in range(n_lucas):
        for year in lucas_years:
            if rng.random() < 0.9:
                jitter = rng.normal(0, 8.0, 2)  # the GPS reading differs between surveys
                rows.append((f"L{i + 1:06d}", lx[i] + jitter[0], ly[i] + jitter[1], int(year)))
    next_id = 1
    for i in range(n_state):
        visits = rng.choice(years, size=min(len(years), 1 + rng.poisson(0.6)), replace=False)
        for year in np.sort(visits):
            rows.append((f"S{next_id:06d}", sx[i], sy[i], int(year)))
            next_id += 1
    frame = pd.DataFrame(rows, columns=["POINTID", "x", "y", "year"])
    return frame.sample(frac=1.0, random_state=int(rng.integers(2**31))).reset_index(drop=True)


def residual_field(world: World) -> np.ndarray:
    """r(x): the spatially autocorrelated residual no covariate explains (log SOC), drawn from the world's stream."""
    return RESIDUAL_SD * smooth_field(world.rng, world.elev.shape, RESIDUAL_RANGE_KM * 1000.0 / world.coarse.res[0])


def covariate_log_soc(world: World, row: np.ndarray, col: np.ndarray, t: np.ndarray,
                      cfg: SimulateConfig) -> np.ndarray:
    """Every term of log SOC but r(x), at pixels (row, col) of the yearly grid in year index `t`."""
    tpi, slope, northness = terrain(world.elev, world.coarse.res[0], cfg.context_px)
    history_slope = B_HIST * (1.0 + cfg.nonstationary * regional_field(cfg, world.coarse))[row, col]
    lst, elev, here = world.bands["LST"], world.elev, world.cover[row, col]
    return (
        COVER_EFFECT[here]
        + B_ELEV * zscore(elev[row, col], elev)
        + B_TPI * zscore(tpi[row, col], tpi)
        + B_SLOPE * zscore(slope[row, col], slope)
        + history_slope * npp_history(world.bands["MODIS_NPP"], t, row, col, cfg)
        + B_LST * (lst[t, row, col] - lst.mean()) / lst.std()
        + cfg.aspect_effect * zscore(northness[row, col], northness)
        + cfg.interaction * INTERACTION_SIGN[here]
        * cover_anomaly(world.bands[INTERACTION_BAND], world.cover)[t, row, col]
        + world.parent_offset[row, col]
    )


def soc_process(sites: pd.DataFrame, world: World, cfg: SimulateConfig) -> pd.DataFrame:
    """Truth and observed OC (g/kg) for each survey row, from the pixel that holds it."""
    grid = world.coarse
    residual = residual_field(world)
    row, col = grid.index(sites["x"].to_numpy(), sites["y"].to_numpy())
    row, col = np.clip(row, 0, grid.height - 1), np.clip(col, 0, grid.width - 1)
    covariate_part = covariate_log_soc(world, row, col, sites["year"].to_numpy() - world.years[0], cfg)
    log_soc = covariate_part + residual[row, col]
    truth = np.exp(log_soc)
    truth_covariates = np.exp(covariate_part + residual.var() / 2.0)
    observed = truth * np.exp(cfg.noise * world.rng.standard_normal(len(sites)) - cfg.noise**2 / 2.0)
    return sites.assign(truth=truth, truth_covariates=truth_covariates, OC=np.round(observed, 2),
                        cover=np.asarray(COVERS)[world.cover[row, col]])


def dirty_rows(table: pd.DataFrame, cfg: SimulateConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Spoil a share of rows as real tables are: missing OC, OC above 150, coordinates outside the
    region; and append exact duplicates. A `dirty` column names what was done."""
    table = table.assign(dirty="")
    n = int(round(len(table) * cfg.dirty_share / 4))
    if n == 0:
        return table
    picks = rng.choice(len(table), size=3 * n, replace=False)
    missing, too_high, outside = picks[:n], picks[n:2 * n], picks[2 * n:]
    oc = table["OC"].to_numpy(dtype=float).copy()
    lon = table["GPS_LONG"].to_numpy().copy()
    oc[missing] = np.nan
    oc[too_high] = np.round(rng.uniform(160.0, 600.0, n), 2)
    west, _, east, _ = cfg.bbox
    lon[outside] = lon[outside] + (east - west) * rng.choice([-1.0, 1.0], n) * rng.uniform(1.05, 1.5, n)
    dirty = table["dirty"].to_numpy(dtype=object)
    dirty[missing], dirty[too_high], dirty[outside] = "missing_target", "above_max_target", "outside_region"
    table = table.assign(OC=oc, GPS_LONG=lon, dirty=dirty)
    duplicates = table.iloc[rng.choice(np.flatnonzero(dirty == ""), size=n, replace=False)]
    return pd.concat([table, duplicates.assign(dirty="duplicate")], ignore_index=True)


# ------------------------------------------------------------------------------ writing


def published(bands: dict[str, np.ndarray], elev: np.ndarray, years: list[int], cfg: SimulateConfig,
              rng: np.random.Generator) -> dict[int, dict[str, np.ndarray]]:
    """Year → band → float32 values as published: scattered nodata pixels (clouds; more on high
    ground: snow), and the latency band missing its last year."""
    snow = 1.0 + 3.0 * (elev > 1200)
    layers: dict[int, dict[str, np.ndarray]] = {}
    for t, year in enumerate(years):
        layers[year] = {}
        for band in YEARLY_BANDS:
            if band == cfg.latency_band and year == years[-1]:
                continue  # product latency: the last year is not published yet
            values = bands[band][t].copy()
            values[rng.random(values.shape) < cfg.nodata_share * snow] = NODATA
            layers[year][band] = values.astype(np.float32)
    return layers


def warp(values: np.ndarray, source: GridSpec, target: GridSpec) -> np.ndarray:
    """`values` on the `target` grid, nearest neighbour (Earth Engine's default), nodata kept. The
    source's edge pixels are repeated two pixels outwards, so that the sliver of the target beyond
    the source (under a pixel wide, from snapping the target to whole pixels) holds values too."""
    if source == target:
        return values
    out = np.full((target.height, target.width), NODATA, dtype=np.float32)
    reproject(np.pad(values, 2, mode="edge"), out, src_transform=source.window_transform(-2, -2),
              src_crs=source.crs, src_nodata=NODATA,
              dst_transform=target.transform, dst_crs=target.crs, dst_nodata=NODATA,
              resampling=Resampling.nearest)
    return out


def raster_files(layout: str, yearly: dict[int, dict[str, np.ndarray]], static: dict[str, np.ndarray],
                 grid: GridSpec, static_grid: GridSpec):
    """Yield (path under rasters/, [(band, values)], grid) for every file of `layout`:
    single_band `{band}/{year}.tif` and `{band}/static.tif`; multiband `{year}.tif` holding the
    yearly bands as layers, static bands as in single_band; tiled each single_band file as a 2×2
    grid of Earth Engine-named tiles `{band}/{year}-{row offset:010d}-{column offset:010d}.tif`."""
    if layout == "multiband":
        files = [(Path(f"{year}.tif"), list(layers.items()), grid) for year, layers in yearly.items()]
    else:
        files = [(Path(band) / f"{year}.tif", [(band, values)], grid)
                 for year, layers in yearly.items() for band, values in layers.items()]
    files += [(Path(band) / "static.tif", [(band, values)], static_grid) for band, values in static.items()]
    for path, layers, on in files:
        if layout != "tiled":
            yield path, layers, on
            continue
        (band, values), = layers
        rows, cols = -(-on.height // 2), -(-on.width // 2)  # tiles of half the grid, rounded up
        for r in (0, rows):
            for c in (0, cols):
                tile = GridSpec(on.crs, on.window_transform(r, c), min(cols, on.width - c), min(rows, on.height - r))
                yield (path.with_name(f"{path.stem}-{r:010d}-{c:010d}.tif"),
                       [(band, values[r:r + tile.height, c:c + tile.width])], tile)


def write_raster(path: Path, layers: list[tuple[str, np.ndarray]], grid: GridSpec) -> None:
    """One float32 GeoTIFF of one layer per (band, values), tiled and compressed, nodata set, each
    layer described by its band name and unit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=len(layers), dtype="float32",
                   crs=grid.crs, transform=grid.transform, nodata=NODATA, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", predictor=3)
    with rasterio.open(path, "w", **profile) as dst:
        for index, (band, values) in enumerate(layers, start=1):
            dst.write(values.astype(np.float32), index)
            dst.set_band_description(index, band)
            dst.set_band_unit(index, UNITS[band])
        dst.update_tags(source="socmap simulated Bavaria")


def pixel_truth(cfg: SimulateConfig, year: int) -> tuple[GridSpec, np.ndarray]:
    """The yearly grid and the noise-free SOC (g/kg) [height, width] of every pixel in `year` (truth.parquet
    has it at the survey rows only), from the world's own draws: what a map of the world should show."""
    world = build_world(cfg)
    survey_sites(cfg, world.coarse, world.rng)  # the draws simulate makes before the residual field's
    residual = residual_field(world)
    rows, cols = np.indices(world.elev.shape)
    t = np.full(rows.size, year - world.years[0])
    log_soc = covariate_log_soc(world, rows.ravel(), cols.ravel(), t, cfg).reshape(rows.shape) + residual
    return world.coarse, np.exp(log_soc)


def simulate(cfg: SimulateConfig, out_dir: str | Path, plots_dir: str | Path | None = None) -> dict:
    """Write the simulated world to `out_dir` (atomically) and return the oracle figures."""
    world = build_world(cfg)
    coarse, fine, years, rng, elev_fine = world.coarse, world.fine, world.years, world.rng, world.elev_fine
    sites = survey_sites(cfg, coarse, rng)
    table = soc_process(sites, world, cfg)
    lon, lat = Transformer.from_crs(coarse.crs.to_string(), "EPSG:4326", always_xy=True).transform(
        table["x"], table["y"])
    table = table.assign(GPS_LONG=np.round(lon, 6), GPS_LAT=np.round(lat, 6))
    day = rng.integers(0, 200, len(table))
    table["survey_date"] = (pd.to_datetime(table["year"].astype(str) + "-04-01")
                            + pd.to_timedelta(day, unit="D")).dt.strftime("%Y-%m-%d")
    table = dirty_rows(table, cfg, rng)
    oracle = oracle_figures(table, years[0] + SampleConfig().time_before - 1)

    grid, static_grid = output_grids(coarse, fine, cfg)
    yearly = {year: {band: warp(values, coarse, grid) for band, values in layers.items()}
              for year, layers in published(world.bands, world.elev, years, cfg, rng).items()}
    static = {"Elevation": warp(elev_fine.astype(np.float32), fine, static_grid)}
    with atomic_path(out_dir) as tmp:
        for path, layers, on in raster_files(cfg.layout, yearly, static, grid, static_grid):
            write_raster(tmp / paths.WORLD_RASTERS / path, layers, on)
        columns = ["POINTID", "GPS_LONG", "GPS_LAT", "year", "OC", "survey_date"]
        table[columns].to_csv(tmp / paths.WORLD_POINTS, index=False)
        truth = table.assign(row_id=np.arange(len(table)))[
            ["row_id", "POINTID", "year", "truth", "truth_covariates", "cover", "dirty"]]
        truth.to_parquet(tmp / paths.WORLD_TRUTH, index=False)
        write_json(tmp / paths.WORLD_ORACLE, oracle)
        (tmp / paths.WORLD_DISTRICTS).write_text(districts_geojson(districts(cfg, coarse)))
    if plots_dir is not None:
        from socmap.plots import plot_synthetic  # matplotlib only when pictures are asked for

        looks = {(band, "static"): values for band, values in static.items()}
        for band in YEARLY_BANDS:  # its first and last published year
            published_years = [year for year in years if band in yearly[year]]
            for year in (published_years[0], published_years[-1]):
                looks[(band, str(year))] = yearly[year][band]
        plot_synthetic(Path(plots_dir), looks, UNITS, coarse, world.cover, COVERS, table)
    log.info("simulated %d rows on a %d×%d grid: r2_full %.3f, r2_covariates %.3f", len(table),
             coarse.height, coarse.width, oracle["r2_full"], oracle["r2_covariates"])
    return oracle


def districts_geojson(cells: list) -> str:
    """A GeoJSON FeatureCollection (lon/lat, RFC 7946) of the districts, named D001, D002, ..."""
    features = [{"type": "Feature", "properties": {"district": f"D{i + 1:03d}"},
                 "geometry": json.loads(shapely.to_geojson(cell))} for i, cell in enumerate(cells)]
    return json.dumps({"type": "FeatureCollection", "features": features}) + "\n"


def oracle_figures(table: pd.DataFrame, first_full_year: int) -> dict:
    """R² of the noise-free expectations against the observed OC, over the rows the default sample
    stage keeps (clean, OC ≤ 150 g/kg, a full 5-year window)."""
    from socmap.metrics import r2_score

    kept = table[(table["dirty"] == "") & (table["OC"] <= 150.0) & (table["year"] >= first_full_year)]
    observed = kept["OC"].to_numpy()
    return {
        "r2_full": r2_score(observed, kept["truth"].to_numpy()),
        "r2_covariates": r2_score(observed, kept["truth_covariates"].to_numpy()),
        "rows": int(len(kept)),
        "rows_written": int(len(table)),
        "dirty_rows": {k: int(v) for k, v in table["dirty"].value_counts().items() if k},
        "oc_percentiles": dict(zip(["p5", "p25", "p50", "p75", "p95", "p99"],
                                   np.round(np.percentile(observed, [5, 25, 50, 75, 95, 99]), 2).tolist())),
        "share_above_50": float(np.mean(observed > 50)),
        "share_above_100": float(np.mean(observed > 100)),
    }


def main(params, world: str = DEFAULT_WORLD) -> None:
    """`socmap simulate --world NAME`: that world of `simulate.worlds` into data/NAME, quick looks
    into plots/NAME."""
    simulate(params.simulate.world(world), world_data(world), plots_dir=world_plots(world))
