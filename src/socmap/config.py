"""`params.yaml`, loaded into typed, frozen objects and validated before any work starts.

Every section of the file is a dataclass below; the field's type says what
the value may be (``Literal`` lists the choices: the one list of them, which the
modules that implement them read with `choices`) and its ``metadata`` gives
ranges. This module imports no implementation, so that a stage's code (and its
dvc.yaml deps) is the stage's own import closure. ``load_params`` rejects unknown keys (naming the nearest valid one),
wrong types, values out of range and inconsistent combinations with a
`SocmapError` that names the key, the value and what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from socmap import paths
from socmap.errors import SocmapError
from socmap.io import read_text
from socmap.validation import Invalid, bounds, build, check_pattern, inside, parse_crs

BAVARIA_BBOX = (8.97, 47.27, 13.84, 50.56)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class RastersConfig:
    dir: str = str(paths.world_data() / paths.WORLD_RASTERS)
    # path patterns under dir: without {band}, one file holds the bands as layers named by their
    # descriptions; a * reads every matching tile as one mosaic
    yearly: str = "{band}/{year}.tif"
    static: str = "{band}/static.tif"
    reference: Optional[str] = None  # band whose grid all others are aligned to; None: first yearly band
    resampling: Literal["bilinear", "cubic", "average", "nearest"] = "bilinear"
    missing_years: Literal["nearest", "mean"] = "nearest"  # how a band missing for a year is filled


@dataclass(frozen=True)
class GridConfig:
    """`data.grid`: the analysis grid every raster is read onto; each null key is the reference band's."""

    crs: Optional[str] = None  # e.g. EPSG:25832
    resolution: Optional[float] = field(default=None, metadata=bounds(gt=0))  # pixel size in units of crs
    extent: Optional[tuple[float, ...]] = field(default=None, metadata=bounds(length=4))  # west, south, east, north


@dataclass(frozen=True)
class ColumnsConfig:
    id: Optional[str] = "POINTID"  # None: an id is made from the row order
    x: str = "GPS_LONG"
    y: str = "GPS_LAT"
    year: Optional[str] = "year"  # None: taken from `date`, else data.points.year
    target: str = "OC"
    date: Optional[str] = None  # a date column that stands in for year


@dataclass(frozen=True)
class PointsConfig:
    path: str = str(paths.world_data() / paths.WORLD_POINTS)
    crs: str = "EPSG:4326"  # used where the file itself carries no CRS
    columns: ColumnsConfig = ColumnsConfig()
    unit: Literal["g/kg", "%"] = "g/kg"
    year: Optional[int] = field(default=None, metadata=bounds(ge=1900, le=2100))  # single survey year
    layer: Optional[str] = None  # layer of a GeoPackage with several


@dataclass(frozen=True)
class RegionConfig:
    bbox: tuple[float, ...] = field(default=BAVARIA_BBOX, metadata=bounds(length=4))
    boundary: Optional[str] = None  # polygon file; overrides bbox


@dataclass(frozen=True)
class DataConfig:
    rasters: RastersConfig = RastersConfig()
    grid: GridConfig = GridConfig()
    bands: tuple[str, ...] = (
        "Elevation", "LAI", "LST", "MODIS_NPP", "SoilEvaporation", "TotalEvapotranspiration",
    )
    static_bands: tuple[str, ...] = ("Elevation",)
    first_year: int = field(default=2007, metadata=bounds(ge=1900, le=2100))
    last_year: int = field(default=2023, metadata=bounds(ge=1900, le=2100))
    points: PointsConfig = PointsConfig()
    region: RegionConfig = RegionConfig()
    max_target: float = field(default=150.0, metadata=bounds(gt=0))  # g/kg

    @property
    def yearly_bands(self) -> tuple[str, ...]:
        return tuple(b for b in self.bands if b not in self.static_bands)

    @property
    def years(self) -> tuple[int, ...]:
        return tuple(range(self.first_year, self.last_year + 1))


# ----------------------------------------------------------------------- simulate


@dataclass(frozen=True)
class SimulateConfig:
    """`simulate`: the simulated Bavaria. The keys from `context_km` on make it a family of worlds that
    differ in how SOC arises and how the rasters are published; their defaults write the default world."""

    # world name -> its own settings (overrides of the keys below); a simulate@<name> stage each, writing
    # data/<name>/; {} with real data
    worlds: dict[str, dict[str, Any]] = field(default_factory=lambda: {paths.DEFAULT_WORLD: {}},
                                               metadata={"parse": lambda value, key: _worlds(value, key)})
    seed: int = field(default=0, metadata=bounds(ge=0))
    bbox: tuple[float, ...] = field(default=BAVARIA_BBOX, metadata=bounds(length=4))  # lon/lat
    resolution_m: float = field(default=1000.0, metadata=bounds(ge=50))  # yearly bands
    static_resolution_m: float = field(default=500.0, metadata=bounds(ge=25))  # Elevation, finer
    first_year: int = field(default=2007, metadata=bounds(ge=1900, le=2100))
    last_year: int = field(default=2023, metadata=bounds(ge=1900, le=2100))
    sites: int = field(default=2600, metadata=bounds(ge=10))
    lucas_share: float = field(default=0.35, metadata=bounds(ge=0, le=1))  # sites revisited in lucas_years
    lucas_years: tuple[int, ...] = (2009, 2015, 2018)
    dirty_share: float = field(default=0.02, metadata=bounds(ge=0, le=0.5))
    nodata_share: float = field(default=0.004, metadata=bounds(ge=0, le=0.5))  # clouds, snow
    # the simulated yearly bands; this one misses its last year (product latency)
    latency_band: Optional[Literal["LAI", "LST", "MODIS_NPP", "SoilEvaporation", "TotalEvapotranspiration"]] = (
        "SoilEvaporation")
    noise: float = field(default=0.2, metadata=bounds(ge=0, le=2))  # measurement noise (sd of log)
    # side (km) of the neighbourhood TPI is taken over, in the nearest odd number of pixels: how wide a
    # spatial context SOC depends on (the window a CNN needs)
    context_km: float = field(default=5.0, metadata=bounds(gt=0))
    # years of NPP (the survey year and those before) in the history term: how long a memory the LSTM needs
    history_years: int = field(default=5, metadata=bounds(ge=1, le=50))
    # their weights: uniform, or recent (w_k ∝ 2^-k, k years before the survey)
    history_weighting: Literal["uniform", "recent"] = "uniform"
    # log-SOC per sd of northness (cos of aspect; > 0: north-facing slopes hold more): a direction effect
    aspect_effect: float = field(default=0.0, metadata=bounds(ge=-1, le=1))
    # log-SOC per sd of TotalEvapotranspiration (from its cover's mean) times +1 / +0.5 / -0.5 / -1 for
    # cropland / grassland / forest / wetland: a land cover x climate interaction
    interaction: float = field(default=0.0, metadata=bounds(ge=-1, le=1))
    # sd of a smooth regional multiplier (over ~100 km) of the NPP history's slope: a nonstationary effect
    nonstationary: float = field(default=0.0, metadata=bounds(ge=0, le=2))
    # hidden soil classes (parent material) with their own SOC offset, seen only through band shifts; 0: none
    latent_classes: int = field(default=0, metadata=bounds(ge=0, le=12))
    crs: str = "EPSG:25832"  # CRS the rasters are written in: a projected CRS in metres, or EPSG:4326
    # files of the rasters: single_band {band}/{year}.tif; multiband {year}.tif; tiled 2x2 tiles per file
    layout: Literal["single_band", "multiband", "tiled"] = "single_band"

    @property
    def context_px(self) -> int:
        """`context_km` in pixels of the yearly grid, rounded to the nearest odd number (ties upwards)."""
        return 2 * math.floor(self.context_km * 1000.0 / self.resolution_m / 2.0) + 1

    def world(self, name: str) -> SimulateConfig:
        """The settings of world `name`: these, with the world's own overrides."""
        if name not in self.worlds:
            raise SocmapError(f"simulate.worlds has no world {name!r}: worlds are "
                              f"{', '.join(self.worlds) or 'none (simulate.worlds is empty)'}")
        return dataclasses.replace(self, **self.worlds[name])


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class SampleConfig:
    window_size: int = field(default=5, metadata=bounds(ge=1, le=101, odd=True))
    time_before: int = field(default=5, metadata=bounds(ge=1, le=50))
    early_years: Literal["drop", "fill"] = "drop"
    fill: Literal["mean", "zero"] = "mean"  # value for nodata pixels and pixels beyond the edge
    min_valid_fraction: float = field(default=0.5, metadata=bounds(ge=0, le=1))
    # pixels per side of a wider neighbourhood whose band means join each patch as one more channel per band
    # (the context beyond the window: relief over several km); 0: none
    context: int = field(default=0, metadata=bounds(ge=0, le=201, odd=True, off=0))


@dataclass(frozen=True)
class SplitConfig:
    seed: int = field(default=0, metadata=bounds(ge=0))
    mode: Literal["holdout", "kfold"] = "holdout"
    folds: int = field(default=5, metadata=bounds(ge=2, le=50))
    test_ratio: float = field(default=0.1, metadata=bounds(gt=0, lt=1))
    stop_ratio: float = field(default=0.08, metadata=bounds(gt=0, lt=1))  # of a run's training rows: early stopping
    distance_threshold: float = field(default=1.2, metadata=bounds(ge=0))  # km
    test_block_km: float = field(default=10.0, metadata=bounds(gt=0))
    strata: int = field(default=10, metadata=bounds(ge=1, le=100))  # target quantile strata of the stop rows


@dataclass(frozen=True)
class TrainConfig:
    model: Literal["refitted_cov_lstm", "cnn", "lstm", "attention", "skip_cov_lstm"] = "refitted_cov_lstm"
    loss_type: Literal["l1", "mse", "composite_l1", "composite_l2"] = "composite_l2"
    loss_alpha: float = field(default=0.5, metadata=bounds(ge=0, le=1))
    loss_sigma: float = field(default=3.0, metadata=bounds(gt=0))  # g/kg, floor of the per-row uncertainty
    loss_sigma_relative: float = field(default=0.1, metadata=bounds(ge=0))  # share of OC added to sigma
    target_transform: Literal["none", "log", "normalize"] = "normalize"
    lr: float = field(default=2e-3, metadata=bounds(gt=0, le=1))
    weight_decay: float = field(default=1e-4, metadata=bounds(ge=0))
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    batch_size: int = field(default=256, metadata=bounds(ge=1))
    epochs: int = field(default=40, metadata=bounds(ge=1))
    patience: int = field(default=0, metadata=bounds(ge=0))  # epochs without improvement; 0: off
    grad_clip: float = field(default=1.0, metadata=bounds(ge=0))  # max gradient norm; 0: off
    num_runs: int = field(default=5, metadata=bounds(ge=1, le=100))
    # window symmetries every training batch is drawn from: none | mirror (east-west: north stays up) |
    # turns (quarter turns) | dihedral (turns and mirrors)
    augment: Literal["none", "mirror", "turns", "dihedral"] = "dihedral"
    # views a prediction (validation, evaluate, map) averages at most: the largest of augment's symmetry groups
    # (none 1, mirror 2, turns 4, dihedral 8) with no more views; 1: the window as it is
    tta: Literal[1, 2, 4, 8] = 4
    balanced: bool = True
    balance_bins: int = field(default=128, metadata=bounds(ge=1))
    balance_fraction: float = field(default=0.75, metadata=bounds(gt=0, le=1))
    hidden_size: int = field(default=64, metadata=bounds(ge=1))  # 128 in the original: overfits ~3000 rows
    num_layers: int = field(default=2, metadata=bounds(ge=1, le=8))
    dropout: float = field(default=0.25, metadata=bounds(ge=0, lt=1))
    seed: int = field(default=0, metadata=bounds(ge=0))
    # fp32: full precision; fp16 / bf16 on GPU only. Not "no": `dvc exp run -S` writes it unquoted, YAML reads False
    mixed_precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    threads: int = field(default=1, metadata=bounds(ge=0))  # torch CPU threads per process; 0: one per core
    parallel_runs: int = field(default=0, metadata=bounds(ge=0))  # runs trained side by side; 0: one per core
    num_processes: int = field(default=1, metadata=bounds(ge=1))  # >1: accelerate launch
    launch_args: str = ""  # extra `accelerate launch` arguments (machines, ranks, GPUs)
    checkpoint_every: int = field(default=1, metadata=bounds(ge=1))  # epochs between resume checkpoints
    monitor: bool = False  # dvclive's system monitoring and HTML report in monitor/train/ (untracked)


@dataclass(frozen=True)
class EvaluateConfig:
    interval: float = field(default=0.9, metadata=bounds(gt=0, lt=1))
    bootstrap: int = field(default=1000, metadata=bounds(ge=0))
    rf_trees: int = field(default=300, metadata=bounds(ge=1))
    rf_min_samples_leaf: tuple[int, ...] = field(default=(1, 5, 20), metadata=bounds(ge=1))  # chosen on the stop rows
    seed: int = field(default=0, metadata=bounds(ge=0))
    batch_size: int = field(default=2048, metadata=bounds(ge=1))
    kriging: Literal["log", "linear", "none"] = "log"  # regression kriging of each run's training residuals
    kriging_neighbours: int = field(default=16, metadata=bounds(ge=1))  # nearest training rows per system


@dataclass(frozen=True)
class MapConfig:
    years: tuple[int, ...] = (2023,)
    block_size: int = field(default=256, metadata=bounds(ge=16))  # pixels per side of a streamed block
    batch_size: int = field(default=4096, metadata=bounds(ge=1))
    num_processes: int = field(default=1, metadata=bounds(ge=1))
    launch_args: str = ""
    # polygons (districts, farms, protected areas) whose mean SOC is written with an interval; None: none
    polygons: Optional[str] = str(paths.world_data() / paths.WORLD_DISTRICTS)


@dataclass(frozen=True)
class Params:
    data: DataConfig = DataConfig()
    simulate: SimulateConfig = SimulateConfig()
    sample: SampleConfig = SampleConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    map: MapConfig = MapConfig()


# ----------------------------------------------------------------------- loading


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise `SocmapError` naming the first bad key."""
    text = read_text(path, "params file not found")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SocmapError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return params_from_dict(raw, source=str(path))


# keys of earlier socmap versions, and what took their place
RETIRED = {
    "split.target_val_ratio": "validation is one fold per run now (the rows outside test in train.num_runs "
                              "distance-matched folds); the share that chooses each run's epoch is split.stop_ratio",
}


def params_from_dict(raw: Any, source: str = "params") -> Params:
    """Build `Params` from a nested dict (as in params.yaml), validating every key."""
    for key, instead in RETIRED.items():
        section, _, name = key.partition(".")
        if isinstance(raw, dict) and isinstance(raw.get(section), dict) and name in raw[section]:
            raise SocmapError(f"{source}: {key} is gone: {instead}; remove it")
    try:
        params = build(Params, raw, "")
        _check_consistency(params)
    except Invalid as exc:
        raise SocmapError(f"{source}: {exc}") from None
    return params


def params_to_dict(params: Any) -> dict:
    """The nested plain-dict form of a params object (tuples as lists), for YAML, JSON and checkpoints."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(params)


def replace(params: Params, **dotted: Any) -> Params:
    """A copy of `params` with dotted keys changed (``replace(p, **{"train.epochs": 2})``), validated."""
    raw = params_to_dict(params)
    for key, value in dotted.items():
        parent, _, last = key.rpartition(".")
        (lookup(raw, parent) if parent else raw)[last] = value
    return params_from_dict(raw)


def choices(section: type, key: str) -> tuple:
    """The values a key of a params section may take (``choices(TrainConfig, "model")``): its Literal."""
    hint = typing.get_type_hints(section)[key]
    if typing.get_origin(hint) is not Literal:  # Optional[Literal[...]]
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return typing.get_args(hint)


def lookup(tree: dict, key: str) -> Any:
    """The value at a dotted key (``"train.lr"``) of a nested dict such as `params_to_dict` gives."""
    node = tree
    for part in key.split("."):
        node = node[part]
    return node


def params_subset(params: Params, keys: tuple[str, ...]) -> dict:
    """The values of dotted `keys` (a key may name a whole section), nested as in params.yaml."""
    raw, picked = params_to_dict(params), {}
    for key in keys:
        parent, _, last = key.rpartition(".")
        node = picked
        for part in parent.split(".") if parent else ():
            node = node.setdefault(part, {})
        node[last] = lookup(raw, key)
    return picked


def _worlds(value: Any, key: str) -> dict[str, dict[str, Any]]:
    """`simulate.worlds`: each world's overrides, validated as the `simulate` keys they override."""
    if not isinstance(value, dict):
        raise Invalid(f"{key} = {value!r}: must be a mapping of world name to its settings, "
                       "e.g. {synthetic: {}, steep: {context_km: 9}}; {} for none")
    worlds = {}
    for name, overrides in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise Invalid(f"{key} has {name!r}: a world name is letters, digits, _ and - only")
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise Invalid(f"{key}.{name} = {overrides!r}: must be a mapping of simulate keys, e.g. {{context_km: 9}}")
        if "worlds" in overrides:
            raise Invalid(f"{key}.{name}.worlds: a world's settings cannot hold worlds")
        built = build(SimulateConfig, overrides, f"{key}.{name}.")
        worlds[name] = {k: getattr(built, k) for k in overrides}
    return worlds


def _check_consistency(p: Params) -> None:
    """Checks that involve more than one key."""
    d = p.data
    if d.first_year > d.last_year:
        raise Invalid(f"data.first_year = {d.first_year} is after data.last_year = {d.last_year}")
    if not d.bands or len(set(d.bands)) != len(d.bands):
        raise Invalid(f"data.bands = {list(d.bands)!r}: must be a non-empty list of distinct names")
    unknown = [b for b in d.static_bands if b not in d.bands]
    if unknown:
        raise Invalid(f"data.static_bands = {list(d.static_bands)!r}: {unknown[0]!r} is not in data.bands "
                       f"({', '.join(d.bands)})")
    if d.rasters.reference is not None and d.rasters.reference not in d.bands:
        raise Invalid(f"data.rasters.reference = {d.rasters.reference!r}: must be one of data.bands "
                       f"({', '.join(d.bands)}) or null")
    for key in ("yearly", "static"):
        check_pattern(getattr(d.rasters, key), f"data.rasters.{key}", required=("year",) if key == "yearly" else (),
                      allowed=("band", "year") if key == "yearly" else ("band",))
    _check_grid(d.grid)
    if d.region.boundary is not None and not inside(d.region.boundary, paths.REGION):
        raise Invalid(f"data.region.boundary = {d.region.boundary!r}: must be a file under {paths.REGION}/ "
                       f"(e.g. {paths.REGION}/bavaria.gpkg), the folder that sample, evaluate and map depend on "
                       "in dvc.yaml, so that an edit of the file reruns them")
    for section, bbox in (("data.region.bbox", d.region.bbox), ("simulate.bbox", p.simulate.bbox)):
        west, south, east, north = bbox
        if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
            raise Invalid(f"{section} = {list(bbox)!r}: must be [west, south, east, north] in degrees "
                           "with west < east and south < north")
    if d.points.columns.year is None and d.points.columns.date is None and d.points.year is None:
        raise Invalid("data.points.columns.year is null: set data.points.columns.date or data.points.year")
    if p.sample.time_before > len(d.years):
        raise Invalid(f"sample.time_before = {p.sample.time_before}: longer than the {len(d.years)} years "
                       f"from data.first_year to data.last_year")
    _check_simulate(p.simulate, "simulate.")
    for name in p.simulate.worlds:
        _check_simulate(p.simulate.world(name), f"simulate.worlds.{name}.")
    if not p.map.years:
        raise Invalid("map.years is empty: give at least one year")
    for year in p.map.years:
        if not d.first_year + p.sample.time_before - 1 <= year <= d.last_year:
            raise Invalid(f"map.years has {year}: must be in {d.first_year + p.sample.time_before - 1}"
                           f"..{d.last_year} so that its {p.sample.time_before}-year window fits the data")


def _check_grid(g: GridConfig) -> None:
    """data.grid: a CRS that parses and an extent with west < east and south < north."""
    if g.crs is not None:
        parse_crs(g.crs, "data.grid.crs")
    if g.extent is not None:
        west, south, east, north = g.extent
        if not (west < east and south < north):
            raise Invalid(f"data.grid.extent = {list(g.extent)!r}: must be [west, south, east, north] in the "
                           "units of data.grid.crs, with west < east and south < north")


def _check_simulate(s: SimulateConfig, prefix: str) -> None:
    """Checks of one world's settings that involve more than one key; `prefix` names the world."""
    if s.first_year > s.last_year:
        raise Invalid(f"{prefix}first_year = {s.first_year} is after {prefix}last_year = {s.last_year}")
    if s.static_resolution_m > s.resolution_m:
        raise Invalid(f"{prefix}static_resolution_m = {s.static_resolution_m:g}: must be <= "
                       f"{prefix}resolution_m = {s.resolution_m:g} (the static band is the finer one)")
    ratio = s.resolution_m / s.static_resolution_m
    if abs(ratio - round(ratio)) > 1e-9:
        raise Invalid(f"{prefix}resolution_m / {prefix}static_resolution_m = {ratio:g}: must be a whole number "
                       "so that the two grids nest")
    if s.context_px < 3:
        raise Invalid(f"{prefix}context_km = {s.context_km:g}: must span at least 3 pixels of "
                       f"{prefix}resolution_m = {s.resolution_m:g} m (>= {2 * s.resolution_m / 1000:g} km)")
    years = s.last_year - s.first_year + 1
    if s.history_years > years:
        raise Invalid(f"{prefix}history_years = {s.history_years}: longer than the {years} years from "
                       f"{prefix}first_year to {prefix}last_year")
    if s.latent_classes == 1:
        raise Invalid(f"{prefix}latent_classes = 1: must be 0 (none) or 2 to 12")
    _check_crs(s.crs, f"{prefix}crs")


def _check_crs(crs: str, key: str) -> None:
    """A CRS the simulation can build in (projected, in metres) or publish to by warping (EPSG:4326)."""
    parsed = parse_crs(crs, key)
    metric = parsed.is_projected and all(axis.unit_name == "metre" for axis in parsed.axis_info)
    if not (metric or parsed.to_epsg() == 4326):
        raise Invalid(f"{key} = {crs!r}: must be a projected CRS in metres (e.g. EPSG:25832, EPSG:3035) "
                       "or EPSG:4326")
