"""The simulated Bavaria: rasters, survey points and the noise-free truth, written like the real data.

The world is built on two grids in EPSG:25832 (UTM 32N) over `simulate.bbox`:
the yearly bands on a grid of `resolution_m`, the static Elevation on a grid
`resolution_m / static_resolution_m` times finer, as the real 500 m and 250 m
products are. Soil organic carbon (g/kg) at a survey row follows

    log SOC = a[cover] + b_elev·z(elev) + b_tpi·z(TPI) + b_slope·z(slope)
              + b_hist·z(NPP over the window) + b_lst·z(LST in the survey year) + r(x)
    OC      = exp(log SOC) · exp(noise·ε − noise²/2),   ε ~ N(0, 1)

where `cover` is a hidden land-cover map (cropland, grassland, forest,
wetland/peat), TPI is the elevation against its neighbourhood mean, the NPP
term is the mean over the survey year and the four before (history), and r is
a spatially autocorrelated residual. The expectation of OC given everything
is exp(log SOC) (the truth); given the covariates alone it is
exp(log SOC − r + var(r)/2).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from pyproj import Transformer
from scipy import ndimage

from socmap.config import SimulateConfig
from socmap.grid import NODATA, GridSpec
from socmap.io import atomic_path, write_json

log = logging.getLogger(__name__)

CRS = "EPSG:25832"
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
HISTORY_YEARS = 5  # the NPP history term: the survey year and the four before
# log-SOC effects: cover intercepts (cropland ≈ 17 g/kg) and covariate slopes per standard deviation
COVER_EFFECT = np.log([15.0, 22.0, 27.0, 85.0])
B_ELEV, B_TPI, B_SLOPE, B_HIST, B_LST = 0.12, -0.22, -0.12, 0.3, -0.08
RESIDUAL_SD, RESIDUAL_RANGE_KM = 0.25, 12.0


# ----------------------------------------------------------------------------- the world


def make_grids(cfg: SimulateConfig) -> tuple[GridSpec, GridSpec]:
    """The yearly-band grid and the finer static grid, covering `cfg.bbox` exactly alike."""
    to_utm = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    west, south, east, north = to_utm.transform_bounds(*cfg.bbox)
    res = cfg.resolution_m
    west, south = np.floor(west / res) * res, np.floor(south / res) * res
    east, north = np.ceil(east / res) * res, np.ceil(north / res) * res
    width, height = int(round((east - west) / res)), int(round((north - south) / res))
    factor = int(round(res / cfg.static_resolution_m))
    coarse = GridSpec.north_up(CRS, west, north, res, width, height)
    return coarse, GridSpec.north_up(CRS, west, north, res / factor, width * factor, height * factor)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """A Gaussian random field of unit standard deviation with correlation length `scale_px` pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(scale_px, 0.01), mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def elevation(grid: GridSpec, rng: np.random.Generator) -> np.ndarray:
    """Terrain in metres: Danube lowlands near 300 m, uplands to the north-east, Alps in the south."""
    x, y = grid.centres(0, 0, grid.height, grid.width)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
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


def terrain(elev: np.ndarray, res: float) -> tuple[np.ndarray, np.ndarray]:
    """Topographic position (elevation minus the 5×5 neighbourhood mean, m) and slope (degrees)."""
    tpi = elev - ndimage.uniform_filter(elev, size=5, mode="nearest")
    gy, gx = np.gradient(elev, res)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    return tpi, slope


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
    bands = {"LAI": np.clip(lai, 0.1, 8.0), "LST": lst, "MODIS_NPP": np.clip(npp, 50.0, None),
             "SoilEvaporation": np.clip(soil_evap, 5.0, None), "TotalEvapotranspiration": total_et}
    return {name: np.broadcast_to(v, shape).astype(np.float64) for name, v in bands.items()}


def zscore(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (values - reference.mean()) / (reference.std() + 1e-12)


# ------------------------------------------------------------------------------ surveys


def survey_sites(cfg: SimulateConfig, grid: GridSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Survey rows inside the bbox: LUCAS-like sites revisited in `lucas_years` under one POINTID
    (GPS a few metres apart), and state-survey sites clustered, revisited in random years at the
    same coordinates under new ids."""
    to_lonlat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
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
                bands: dict[str, np.ndarray], years: list[int], cfg: SimulateConfig,
                rng: np.random.Generator) -> pd.DataFrame:
    """Truth and observed OC (g/kg) for each survey row, from the pixel that holds it."""
    tpi, slope = terrain(elev, grid.res[0])
    residual = RESIDUAL_SD * smooth_field(rng, elev.shape, RESIDUAL_RANGE_KM * 1000.0 / grid.res[0])
    row, col = grid.index(sites["x"].to_numpy(), sites["y"].to_numpy())
    row, col = np.clip(row, 0, grid.height - 1), np.clip(col, 0, grid.width - 1)
    t = sites["year"].to_numpy() - years[0]
    npp = bands["MODIS_NPP"]
    history = np.stack([npp[np.clip(t - k, 0, None), row, col] for k in range(HISTORY_YEARS)]).mean(axis=0)
    npp_windows = ndimage.uniform_filter1d(npp, HISTORY_YEARS, axis=0, origin=(HISTORY_YEARS - 1) // 2)
    lst = bands["LST"]
    covariate_part = (
        COVER_EFFECT[cover[row, col]]
        + B_ELEV * zscore(elev[row, col], elev)
        + B_TPI * zscore(tpi[row, col], tpi)
        + B_SLOPE * zscore(slope[row, col], slope)
        + B_HIST * zscore(history, npp_windows[HISTORY_YEARS - 1:])
        + B_LST * (lst[t, row, col] - lst.mean()) / lst.std()
    )
    log_soc = covariate_part + residual[row, col]
    truth = np.exp(log_soc)
    truth_covariates = np.exp(covariate_part + residual.var() / 2.0)
    observed = truth * np.exp(cfg.noise * rng.standard_normal(len(sites)) - cfg.noise**2 / 2.0)
    return sites.assign(truth=truth, truth_covariates=truth_covariates, OC=np.round(observed, 2),
                        cover=np.asarray(COVERS)[cover[row, col]])


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


def write_raster(path: Path, values: np.ndarray, grid: GridSpec, band: str) -> None:
    """One single-band float32 GeoTIFF, tiled and compressed, nodata set, with unit and description."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="float32",
                   crs=grid.crs, transform=grid.transform, nodata=NODATA, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", predictor=3)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values.astype(np.float32), 1)
        dst.set_band_description(1, band)
        dst.set_band_unit(1, UNITS[band])
        dst.update_tags(source="socmap simulated Bavaria")


def simulate(cfg: SimulateConfig, out_dir: str | Path, plots_dir: str | Path | None = None) -> dict:
    """Write the simulated world to `out_dir` (atomically) and return the oracle figures."""
    rng = np.random.default_rng(cfg.seed)
    coarse, fine = make_grids(cfg)
    years = list(range(cfg.first_year, cfg.last_year + 1))
    elev_fine = elevation(fine, rng)
    res = coarse.res[0]
    elev = block_mean(elev_fine, int(round(res / fine.res[0])))
    tpi, slope = terrain(elev, res)
    cover = land_cover(elev, tpi, slope, rng, res)
    bands = yearly_bands(cover, elev, years, rng, res)

    sites = survey_sites(cfg, coarse, rng)
    table = soc_process(sites, coarse, elev, cover, bands, years, cfg, rng)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(table["x"], table["y"])
    table = table.assign(GPS_LONG=np.round(lon, 6), GPS_LAT=np.round(lat, 6))
    day = rng.integers(0, 200, len(table))
    table["survey_date"] = (pd.to_datetime(table["year"].astype(str) + "-04-01")
                            + pd.to_timedelta(day, unit="D")).dt.strftime("%Y-%m-%d")
    table = dirty_rows(table, cfg, rng)

    oracle = oracle_figures(table, years[0] + HISTORY_YEARS - 1)
    with atomic_path(out_dir) as tmp:
        for t, year in enumerate(years):
            for band in YEARLY_BANDS:
                if band == cfg.latency_band and year == years[-1]:
                    continue  # product latency: the last year is not published yet
                values = bands[band][t].copy()
                snow = 1.0 + 3.0 * (elev > 1200)
                values[rng.random(values.shape) < cfg.nodata_share * snow] = NODATA
                write_raster(tmp / "rasters" / band / f"{year}.tif", values, coarse, band)
        write_raster(tmp / "rasters" / "Elevation" / "static.tif", elev_fine, fine, "Elevation")
        columns = ["POINTID", "GPS_LONG", "GPS_LAT", "year", "OC", "survey_date"]
        table[columns].to_csv(tmp / "points.csv", index=False)
        truth = table.assign(row_id=np.arange(len(table)))[
            ["row_id", "POINTID", "year", "truth", "truth_covariates", "cover", "dirty"]]
        truth.to_parquet(tmp / "truth.parquet", index=False)
        write_json(tmp / "oracle.json", oracle)
    if plots_dir is not None:
        from socmap.plots import plot_synthetic  # matplotlib only when pictures are asked for

        plot_synthetic(Path(out_dir), Path(plots_dir), coarse, cover, COVERS, table)
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


def main(params, out: str = "data/synthetic", plots: str = "plots/synthetic") -> None:
    """`socmap simulate`: the world into `out`, quick looks into `plots`."""
    simulate(params.simulate, out, plots_dir=plots)
