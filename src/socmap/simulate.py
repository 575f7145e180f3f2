"""The simulated Bavaria: rasters, survey points and the noise-free truth, written like the real data.

The world is built on two grids in a metric CRS over `simulate.bbox` (`simulate.crs`, or
EPSG:25832 when that is lon/lat): the yearly bands on a grid of `resolution_m`, the static
Elevation on a grid `resolution_m / static_resolution_m` times finer, as the real 500 m and 250 m
products are. Soil organic carbon (g/kg) at a survey row follows

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

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.warp import Resampling, reproject
from scipy import ndimage

from socmap.config import SampleConfig, SimulateConfig
from socmap.grid import NODATA, GridSpec
from socmap.io import atomic_path, write_json
from socmap.paths import DEFAULT_WORLD, world_data, world_plots

log = logging.getLogger(__name__)

BUILD_CRS = "EPSG:25832"  # the metric CRS a world published in lon/lat is built in
METRES_PER_DEGREE = 111319.49079327357  # Earth Engine's metres per degree: the pixel of a lon/lat export
COVERS = ("cropland", "grassland", "forest", "wetland")
YEARLY_BANDS = ("LAI", "LST", "MODIS_NPP", "SoilEvaporation", "TotalEvapotranspiration")
STATIC_BANDS = ("Elevation",)
UNITS = {
    "Elevation": "m",
    "LAI": "m2/m2",
    "LST": "degC",
    "MODIS_NPP": "g C m-2 yr-1",
    "SoilEvaporation": "mm yr-1",
    "TotalEvapotranspiration": "mm yr-1",
}
BAND_LIMITS = {"LAI": (0.1, 8.0), "MODIS_NPP": (50.0, None), "SoilEvaporation": (5.0, None)}
# log-SOC effects: cover intercepts (cropland ≈ 17 g/kg) and covariate slopes per standard deviation
COVER_EFFECT = np.log([15.0, 22.0, 27.0, 85.0])
B_ELEV, B_TPI, B_SLOPE, B_HIST, B_LST = 0.12, -0.22, -0.12, 0.3, -0.08
RESIDUAL_SD, RESIDUAL_RANGE_KM = 0.25, 12.0
COVER_RELIEF_PX = 5  # land cover: wet depressions are elevation against its 5×5-pixel mean
# simulate.interaction: more evapotranspiration, more growth on mineral soils; drier, decaying soils
# under forest and on drained peat (sign per cover, in COVERS order)
INTERACTION_BAND = "TotalEvapotranspiration"
INTERACTION_SIGN = np.array([1.0, 0.5, -0.5, -1.0])
# simulate.nonstationary: f(x) is a sum of plane waves of this wavelength (high to low over ~100 km)
REGIONAL_WAVELENGTH_KM, REGIONAL_WAVES = 200.0, 8
# simulate.latent_classes: parent-material patches, their log-SOC offsets spread evenly over
# ±PARENT_OFFSET, and the band shifts that are their only trace in the rasters (± these, evenly)
PARENT_PATCH_KM, PARENT_OFFSET = 10.0, 0.35
PARENT_SIGNATURE = {"SoilEvaporation": 20.0, "LAI": 0.3}
# random streams of their own, so that a world with a knob on shares every other draw with one without
REGIONAL_STREAM, PARENT_STREAM = 1, 2


# ----------------------------------------------------------------------------- the world


def make_grids(cfg: SimulateConfig) -> tuple[GridSpec, GridSpec]:
    """The yearly-band grid and the finer static grid in the build CRS, covering `cfg.bbox` exactly alike."""
    crs = BUILD_CRS if ProjCRS.from_user_input(cfg.crs).is_geographic else cfg.crs
    to_metric = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    west, south, east, north = to_metric.transform_bounds(*cfg.bbox)
    res = cfg.resolution_m
    west, south = np.floor(west / res) * res, np.floor(south / res) * res
    east, north = np.ceil(east / res) * res, np.ceil(north / res) * res
    width, height = int(round((east - west) / res)), int(round((north - south) / res))
    factor = int(round(res / cfg.static_resolution_m))
    coarse = GridSpec.north_up(crs, west, north, res, width, height)
    return coarse, GridSpec.north_up(crs, west, north, res / factor, width * factor, height * factor)


def output_grids(coarse: GridSpec, fine: GridSpec, cfg: SimulateConfig) -> tuple[GridSpec, GridSpec]:
    """The grids the rasters are written on: the build grids, or for a lon/lat `cfg.crs` grids of
    square-degree pixels over `cfg.bbox` of about the same size (as Earth Engine exports at a scale)."""
    if not ProjCRS.from_user_input(cfg.crs).is_geographic:
        return coarse, fine
    res = coarse.res[0] / METRES_PER_DEGREE
    west, south, east, north = cfg.bbox
    west, south = np.floor(west / res) * res, np.floor(south / res) * res
    east, north = np.ceil(east / res) * res, np.ceil(north / res) * res
    width, height = int(round((east - west) / res)), int(round((north - south) / res))
    factor = int(round(coarse.res[0] / fine.res[0]))
    return (GridSpec.north_up(cfg.crs, west, north, res, width, height),
            GridSpec.north_up(cfg.crs, west, north, res / factor, width * factor, height * factor))


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """A Gaussian random field of unit standard deviation with correlation length `scale_px` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(scale_px, 0.01), mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def stream(cfg: SimulateConfig, key: int) -> np.random.Generator:
    """A random stream of the world's seed that the main stream never sees."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(key,)))


def elevation(grid: GridSpec, rng: np.random.Generator) -> np.ndarray:
    """Terrain in metres: Danube lowlands near 300 m, uplands to the north-east, Alps in the south."""
    x, y = grid.centres(0, 0, grid.height, grid.width)
    lon, lat = Transformer.from_crs(grid.crs.to_string(), "EPSG:4326", always_xy=True).transform(x, y)
    alps = 1500.0 / (1.0 + np.exp((lat - 47.62) / 0.06))
    foreland = 320.0 * np.clip((48.55 - lat) / 0.9, 0.0, 1.0)
    uplands = 260.0 * np.clip((lat - 48.95) / 1.2, 0.0, 1.0)
    # the Bavarian Forest: a ridge along the Czech border, from (12.4, 49.5) to (13.8, 48.75)
    t = np.clip(((lon - 12.4) * 1.4 + (lat - 49.5) * -0.75) / (1.4**2 + 0.75**2), 0.0, 1.0)
    ridge = np.hypot(lon - (12.4 + 1.4 * t), (lat - (49.5 - 0.75 * t)) * 1.5)
    forest_ridge = 650.0 * np.exp(-((ridge / 0.22) ** 2))
    km = 1000.0 / grid.res[0]
    hills = 70.0 * smooth_field(rng, x.shape, 6 * km) + 30.0 * smooth_field(rng, x.shape, 1.5 * km)
    rugged = 1.0 + alps / 450.0  # mountains are rougher
    return np.clip(330.0 + alps + foreland + uplands + forest_ridge + hills * rugged, 100.0, None)


def block_mean(fine: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor`×`factor` blocks of a fine grid onto the coarse grid."""
    h, w = fine.shape[0] // factor, fine.shape[1] // factor
    return fine[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def terrain(elev: np.ndarray, res: float, context_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Topographic position (elevation minus its mean over `context_px`×`context_px` pixels, m), slope
    (degrees) and northness (cosine of the aspect: 1 on a slope facing north, −1 facing south)."""
    tpi = elev - ndimage.uniform_filter(elev, size=context_px, mode="nearest")
    gy, gx = np.gradient(elev, res)  # rows run south: gy > 0 where the ground rises to the south
    steepness = np.hypot(gx, gy)
    slope = np.degrees(np.arctan(steepness))
    northness = np.divide(gy, steepness, out=np.zeros_like(gy), where=steepness > 0)
    return tpi, slope, northness


def land_cover(elev: np.ndarray, tpi: np.ndarray, slope: np.ndarray, rng: np.random.Generator,
               res: float) -> np.ndarray:
    """Hidden land cover (index into COVERS): crops on flat lowlands, forest on steep and high
    ground, grassland in the foreland, peat in wet depressions."""
    km = 1000.0 / res
    patches = [smooth_field(rng, elev.shape, 3 * km) for _ in COVERS]
    z_elev = (elev - 550.0) / 250.0
    score = np.stack([
        0.9 - 0.8 * z_elev - 0.25 * slope + 0.8 * patches[0],
        0.2 + 0.3 * np.clip(z_elev, -1, 2) + 0.8 * patches[1],
        -0.3 + 0.7 * z_elev + 0.3 * slope + 0.9 * patches[2],
        -0.6 - 0.015 * tpi - 0.4 * slope + 1.1 * patches[3],
    ])
    return np.argmax(score, axis=0).astype(np.int8)


def yearly_bands(cover: np.ndarray, elev: np.ndarray, years: list[int], rng: np.random.Generator,
                 res: float) -> dict[str, np.ndarray]:
    """Each yearly band as [year, height, width]: a long-term pattern from terrain and cover,
    a trend, and a spatially smooth anomaly per year."""
    km = 1000.0 / res
    shape = (len(years),) + elev.shape
    t = (np.asarray(years, dtype=float) - 2015.0)[:, None, None]

    def anomaly(sd_field: float, sd_year: float) -> np.ndarray:
        fields = np.stack([smooth_field(rng, elev.shape, 25 * km) for _ in years])
        return sd_field * fields + sd_year * rng.standard_normal((len(years), 1, 1))

    by_cover = lambda values: np.asarray(values)[cover]  # noqa: E731 - a table lookup
    z_elev = (elev - 550.0) / 250.0
    lai = by_cover([2.6, 3.2, 5.0, 3.6]) - 0.25 * np.clip(z_elev, 0, None) + 0.02 * t + anomaly(0.35, 0.15)
    lst = 15.5 - 0.0062 * elev + by_cover([0.6, 0.0, -1.6, -0.8]) + 0.05 * t + anomaly(0.5, 0.6)
    npp = by_cover([560.0, 610.0, 720.0, 480.0]) - 0.12 * (elev - 550.0) + 3.0 * t + anomaly(110.0, 30.0)
    soil_evap = by_cover([170.0, 115.0, 55.0, 190.0]) + 6.0 * (lst - 10.0) + anomaly(12.0, 8.0)
    total_et = 380.0 + 0.25 * npp + 1.2 * soil_evap - 0.05 * (elev - 550.0) + anomaly(20.0, 15.0)
    bands = {"LAI": np.clip(lai, *BAND_LIMITS["LAI"]), "LST": lst,
             "MODIS_NPP": np.clip(npp, *BAND_LIMITS["MODIS_NPP"]),
             "SoilEvaporation": np.clip(soil_evap, *BAND_LIMITS["SoilEvaporation"]),
             "TotalEvapotranspiration": total_et}
    return {name: np.broadcast_to(v, shape).astype(np.float64) for name, v in bands.items()}


def parent_material(cfg: SimulateConfig, shape: tuple[int, int], res: float
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Hidden soil classes (`cfg.latent_classes` of them; none: one class with no effect): each
    pixel's class, each class's log-SOC offset, and per band each class's shift of the band values."""
    if cfg.latent_classes == 0:
        return np.zeros(shape, dtype=np.int8), np.zeros(1), {}
    rng = stream(cfg, PARENT_STREAM)
    fields = np.stack([smooth_field(rng, shape, PARENT_PATCH_KM * 1000.0 / res) for _ in range(cfg.latent_classes)])
    spread = lambda: np.linspace(-1.0, 1.0, cfg.latent_classes)[rng.permutation(cfg.latent_classes)]  # noqa: E731
    offsets = PARENT_OFFSET * spread()
    signature = {band: size * spread() for band, size in PARENT_SIGNATURE.items()}
    return np.argmax(fields, axis=0).astype(np.int8), offsets, signature


def with_signature(bands: dict[str, np.ndarray], classes: np.ndarray,
                   signature: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bands with each soil class's shift added (within the bands' limits)."""
    shifted = {band: np.clip(bands[band] + shift[classes], *BAND_LIMITS[band]) for band, shift in signature.items()}
    return {**bands, **shifted}


def regional_field(cfg: SimulateConfig, grid: GridSpec) -> np.ndarray:
    """f(x) of `simulate.nonstationary`: unit variance, highs and lows ~100 km apart, on any region."""
    rng = stream(cfg, REGIONAL_STREAM)
    x, y = grid.centres(0, 0, grid.height, grid.width)
    angle = rng.uniform(0.0, np.pi, REGIONAL_WAVES)
    phase = rng.uniform(0.0, 2 * np.pi, REGIONAL_WAVES)
    k = 2 * np.pi / (REGIONAL_WAVELENGTH_KM * 1000.0)
    waves = [np.cos(k * (x * np.cos(a) + y * np.sin(a)) + p) for a, p in zip(angle, phase)]
    return np.sqrt(2.0 / REGIONAL_WAVES) * np.sum(waves, axis=0)


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


def soc_process(sites: pd.DataFrame, grid: GridSpec, elev: np.ndarray, cover: np.ndarray,
                parent_offset: np.ndarray, bands: dict[str, np.ndarray], years: list[int],
                cfg: SimulateConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Truth and observed OC (g/kg) for each survey row, from the pixel that holds it."""
    tpi, slope, northness = terrain(elev, grid.res[0], cfg.context_px)
    residual = RESIDUAL_SD * smooth_field(rng, elev.shape, RESIDUAL_RANGE_KM * 1000.0 / grid.res[0])
    row, col = grid.index(sites["x"].to_numpy(), sites["y"].to_numpy())
    row, col = np.clip(row, 0, grid.height - 1), np.clip(col, 0, grid.width - 1)
    t = sites["year"].to_numpy() - years[0]
    history_slope = B_HIST * (1.0 + cfg.nonstationary * regional_field(cfg, grid))[row, col]
    lst = bands["LST"]
    here = cover[row, col]
    covariate_part = (
        COVER_EFFECT[here]
        + B_ELEV * zscore(elev[row, col], elev)
        + B_TPI * zscore(tpi[row, col], tpi)
        + B_SLOPE * zscore(slope[row, col], slope)
        + history_slope * npp_history(bands["MODIS_NPP"], t, row, col, cfg)
        + B_LST * (lst[t, row, col] - lst.mean()) / lst.std()
        + cfg.aspect_effect * zscore(northness[row, col], northness)
        + cfg.interaction * INTERACTION_SIGN[here] * cover_anomaly(bands[INTERACTION_BAND], cover)[t, row, col]
        + parent_offset[row, col]
    )
    log_soc = covariate_part + residual[row, col]
    truth = np.exp(log_soc)
    truth_covariates = np.exp(covariate_part + residual.var() / 2.0)
    observed = truth * np.exp(cfg.noise * rng.standard_normal(len(sites)) - cfg.noise**2 / 2.0)
    return sites.assign(truth=truth, truth_covariates=truth_covariates, OC=np.round(observed, 2),
                        cover=np.asarray(COVERS)[here])


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


def simulate(cfg: SimulateConfig, out_dir: str | Path, plots_dir: str | Path | None = None) -> dict:
    """Write the simulated world to `out_dir` (atomically) and return the oracle figures."""
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

    sites = survey_sites(cfg, coarse, rng)
    table = soc_process(sites, coarse, elev, cover, offsets[classes], bands, years, cfg, rng)
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
              for year, layers in published(bands, elev, years, cfg, rng).items()}
    static = {"Elevation": warp(elev_fine.astype(np.float32), fine, static_grid)}
    with atomic_path(out_dir) as tmp:
        for path, layers, on in raster_files(cfg.layout, yearly, static, grid, static_grid):
            write_raster(tmp / "rasters" / path, layers, on)
        columns = ["POINTID", "GPS_LONG", "GPS_LAT", "year", "OC", "survey_date"]
        table[columns].to_csv(tmp / "points.csv", index=False)
        truth = table.assign(row_id=np.arange(len(table)))[
            ["row_id", "POINTID", "year", "truth", "truth_covariates", "cover", "dirty"]]
        truth.to_parquet(tmp / "truth.parquet", index=False)
        write_json(tmp / "oracle.json", oracle)
    if plots_dir is not None:
        from socmap.plots import plot_synthetic  # matplotlib only when pictures are asked for

        looks = {(band, "static"): values for band, values in static.items()}
        for band in YEARLY_BANDS:  # its first and last published year
            published_years = [year for year in years if band in yearly[year]]
            for year in (published_years[0], published_years[-1]):
                looks[(band, str(year))] = yearly[year][band]
        plot_synthetic(Path(plots_dir), looks, UNITS, coarse, cover, COVERS, table)
    log.info("simulated %d rows on a %d×%d grid: r2_full %.3f, r2_covariates %.3f", len(table),
             coarse.height, coarse.width, oracle["r2_full"], oracle["r2_covariates"])
    return oracle


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
