"""Every artifact path of the pipeline, relative to the project root: the names `dvc.yaml` declares.

Stages read and write through these names only (a test checks them against `dvc.yaml`), so that a
path is spelt once in the code.
"""

from __future__ import annotations

from pathlib import Path

# inputs: a boundary file (data.region.boundary) lies in this folder, which dvc.yaml lists as a dep of
# every stage that reads the region (DVC has no optional deps: a null path cannot be one)
REGION = Path("data/region")

# sample
PROCESSED = Path("data/processed")
PATCHES = PROCESSED / "patches.npy"  # float32 [rows, bands, window, window, years]
SAMPLES = PROCESSED / "samples.parquet"  # one row per patch, in patch order
REPORT = PROCESSED / "report.json"  # rows read, kept, dropped by reason; fills; the grid; the oracle figures
TRUTH = PROCESSED / "truth.parquet"  # a simulated world's truth of the kept rows (no rows for real data)
PREDICTION_POINTS = PROCESSED / "prediction_points.parquet"  # x, y of map pixels: where prediction happens

# split
SPLIT = Path("data/splits/split.parquet")  # row_id, run, role, block
SPLIT_DETAIL = Path("data/splits/detail.json")  # per run: sizes, distances, the kNNDM choice
SPLIT_METRICS = Path("metrics/split.json")
SPLIT_PLOTS = Path("plots/split")

# train
MODELS = Path("models")  # run_{k}.pt, best.pt
TRAIN_METRICS = Path("metrics/train")  # dvclive: metrics.json, plots/
TRAIN_CURVES = Path("plots/train/curves.csv")  # every run's epochs, one row each (in DVC: run-cache)
RESUME = Path("resume/train")  # run_{k}.pt training states, emptied once training completes; not a DVC output
TRAIN_MONITOR = Path("monitor/train")  # train.monitor: dvclive's system log and HTML report; untracked

# baselines
BASELINES = Path("data/baselines/baselines.npz")  # the forests' predictions of each run's test rows, for evaluate

# evaluate
EVALUATE_METRICS = Path("metrics/evaluate")  # dvclive: metrics.json
EVALUATE_PLOTS = Path("plots/evaluate")  # predictions.csv and the other plot data, PNGs
EVALUATE_DETAILS = EVALUATE_PLOTS / "details.json"  # every figure of the stage (metrics.json: the headline)
CALIBRATION = Path("data/evaluate/calibration.json")  # the interval calibration, read by the map stage
KRIGING_FIELDS = Path("data/evaluate/kriging.npz")  # every run's residual field, read by the map stage
APPLICABILITY = Path("data/evaluate/applicability.npz")  # the DI's reference set and AOA threshold, for the map
ERROR_CORRELATION = Path("data/evaluate/error_correlation.json")  # errors shared by places and years, for the map
# what the map reads from the evaluate stage (the bundle stage copies them beside the checkpoints)
MAP_INPUTS = (CALIBRATION, KRIGING_FIELDS, APPLICABILITY, ERROR_CORRELATION)

# bundle: the ensemble the map needs, one folder (dvc.yaml's model artifact)
ENSEMBLE = Path("data/ensemble")  # run_{k}.pt, best.pt and the MAP_INPUTS, under their own names

# map
MAPS = Path("data/maps")  # soc_{year}.tif, soc_change_{first}_{last}.tif
MAP_PLOTS = Path("plots/map")
MAP_METRICS = Path("metrics/map.json")  # the AOA threshold, the share of mapped pixels inside it, detectable change
POLYGON_MEANS = Path("data/polygons")  # soc_{year}.csv: the mean SOC of each polygon of map.polygons, with intervals

# simulate: one folder of data and one of pictures per simulated world, its files named so
DEFAULT_WORLD = "synthetic"
WORLD_RASTERS = "rasters"  # {band}/{year}.tif and {band}/static.tif
WORLD_POINTS = "points.csv"  # the survey table, as the real one
WORLD_TRUTH = "truth.parquet"  # the noise-free truth per row: it marks a simulated world
WORLD_ORACLE = "oracle.json"  # the ceilings over the rows the default sample stage keeps
WORLD_DISTRICTS = "districts.geojson"  # simulated districts (lon/lat) to summarise the map over


def world_data(name: str = DEFAULT_WORLD) -> Path:
    """The folder a simulated world is written to: rasters/, points.csv, truth.parquet, oracle.json."""
    return Path("data") / name


def world_plots(name: str = DEFAULT_WORLD) -> Path:
    """The folder of a simulated world's quick-look pictures."""
    return Path("plots") / name
