"""The simulated landscape: terrain, hidden land cover, the yearly bands, the hidden soil classes and
the districts.

Everything here is a raster of the world's grids: the yearly bands on a grid of `resolution_m` in a
metric CRS over `simulate.bbox` (`simulate.crs`, or EPSG:25832 when that is lon/lat), the static
Elevation on a grid `resolution_m / static_resolution_m` times finer, as the real 500 m and 250 m
products are; the districts are lon/lat polygons over the bbox. `socmap.simulate` draws the survey
rows and their SOC on it.
"""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from scipy import ndimage

from socmap.config import SimulateConfig, choices
from socmap.grid import GridSpec

BUILD_CRS = "EPSG:25832"  # the metric CRS a world published in lon/lat is built in
METRES_PER_DEGREE = 111319.49079327357  # Earth Engine's metres per degree: the pixel of a lon/lat export
COVERS = ("cropland", "grassland", "forest", "wetland")
YEARLY_BANDS = choices(SimulateConfig, "latency_band")
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
COVER_RELIEF_PX = 5  # land cover: wet depressions are elevation against its 5×5-pixel mean
# simulate.nonstationary: f(x) is a sum of plane waves of this wavelength (high to low over ~100 km)
REGIONAL_WAVELENGTH_KM, REGIONAL_WAVES = 200.0, 8
# simulate.latent_classes: parent-material patches, their log-SOC offsets spread evenly over
# ±PARENT_OFFSET, and the band shifts that are their only trace in the rasters (± these, evenly)
PARENT_PATCH_KM, PARENT_OFFSET = 10.0, 0.35
PARENT_SIGNATURE = {"SoilEvaporation": 20.0, "LAI": 0.3}
# random streams of their own, so that a world with a knob on shares every other draw with one without
REGIONAL_STREAM, PARENT_STREAM, DISTRICT_STREAM = 1, 2, 3
DISTRICT_KM2 = 750.0  # km² per simulated district: Bavaria's 96 districts over its 70,550 km²
DISTRICT_RELAXATIONS = 3  # moves of the district centres to their cells' centroids


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


def districts(cfg: SimulateConfig, grid: GridSpec) -> list:
    """Simulated districts over the bbox, lon/lat polygons: Voronoi cells of random centres (a random
    stream of their own) moved to their cells' centroids a few times, so that they come out of about
    equal size, one per `DISTRICT_KM2` of the bbox as Bavaria's 96 are."""
    to_metric = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    box = shapely.segmentize(shapely.box(*cfg.bbox), 0.01)  # its edges bend in the metric CRS
    area = shapely.transform(box, lambda xy: np.stack(to_metric.transform(*xy.T), axis=1))
    count = max(1, round(area.area / 1e6 / DISTRICT_KM2))
    cells = [area]
    if count > 1:
        rng = stream(cfg, DISTRICT_STREAM)
        west, south, east, north = area.bounds
        centres = shapely.points(rng.uniform(west, east, 4 * count), rng.uniform(south, north, 4 * count))
        centres = centres[shapely.contains(area, centres)][:count]
        for _ in range(DISTRICT_RELAXATIONS + 1):
            cells = [cell.intersection(area) for cell in
                     shapely.voronoi_polygons(shapely.multipoints(centres), extend_to=area, ordered=True).geoms]
            centres = shapely.centroid(cells)
    return [shapely.transform(cell, lambda xy: np.round(np.stack(to_lonlat.transform(*xy.T), axis=1), 6))
            for cell in cells]
