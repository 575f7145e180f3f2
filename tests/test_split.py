"""The split stage: its guarantees, re-checked with brute-force distances independent of the stage's code."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pyproj import Geod, Transformer
from scipy.spatial import cKDTree

from socmap import paths
from socmap import split as split_stage
from socmap.config import SplitConfig
from socmap.errors import SocmapError
from socmap.split import ROLES, assign_roles, split_metrics
from scipy.stats import ks_2samp

from conftest import tiny_params

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def point_cloud(seed: int, n_sites: int, extent_km: float, clustered: float, sigma: float = 0.6) -> pd.DataFrame:
    """A samples.parquet-shaped table: sites uniform or clustered, revisited 1-3 times a few metres apart."""
    rng = np.random.default_rng(seed)
    extent = extent_km * 1000.0
    xy = rng.uniform(0, extent, (n_sites, 2))
    n_clustered = int(clustered * n_sites)
    centres = rng.uniform(0, extent, (max(1, n_sites // 30), 2))
    around = centres[rng.integers(0, len(centres), n_clustered)]
    xy[:n_clustered] = around + rng.normal(0, extent / 20, (n_clustered, 2))
    visits = rng.choice([1, 2, 3], n_sites, p=[0.6, 0.25, 0.15])
    site = np.repeat(np.arange(n_sites), visits)
    row_xy = xy[site] + rng.normal(0, 8.0, (len(site), 2))  # GPS differs between surveys
    order = rng.permutation(len(site))
    return pd.DataFrame({
        "row_id": np.arange(len(site), dtype=np.int64) * 3 + 7,  # not the position, as after drops
        "site_id": (site[order] * 11 + 100).astype(np.int64),
        "x": 500_000.0 + row_xy[order, 0], "y": 5_300_000.0 + row_xy[order, 1],
        "target": np.round(rng.lognormal(np.log(20.0), sigma, len(site)), 2),
    })


def min_distance(xy: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Smallest Euclidean distance (m) between rows in mask a and rows in mask b, by brute force."""
    if not a.any() or not b.any():
        return math.inf
    diff = xy[a][:, None, :] - xy[b][None, :, :]
    return float(np.sqrt((diff ** 2).sum(axis=2)).min())


def prediction_grid(samples: pd.DataFrame, n: int = 30) -> np.ndarray:
    """Prediction points on a regular n × n grid over the samples' extent (as map pixels would be)."""
    x = np.linspace(samples["x"].min(), samples["x"].max(), n)
    y = np.linspace(samples["y"].min(), samples["y"].max(), n)
    gx, gy = np.meshgrid(x, y)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def split_of(samples: pd.DataFrame, cfg: SplitConfig, num_runs: int) -> pd.DataFrame:
    return assign_roles(samples, cfg, num_runs, prediction_grid(samples))[0]


def check_guarantees(samples: pd.DataFrame, split: pd.DataFrame, cfg: SplitConfig, num_runs: int) -> None:
    """Every promise of the split, recomputed from the two tables alone."""
    runs = cfg.folds * num_runs if cfg.mode == "kfold" else num_runs
    assert sorted(split["run"].unique()) == list(range(runs))
    assert set(split["role"]) <= set(ROLES)
    xy = samples[["x", "y"]].to_numpy()
    threshold = cfg.distance_threshold * 1000.0
    largest_site = samples["site_id"].value_counts().max()
    tests, vals = [], []
    for run in range(runs):
        frame = split[split["run"] == run]
        assert len(frame) == len(samples) and set(frame["row_id"]) == set(samples["row_id"])
        merged = samples[["row_id", "site_id"]].merge(frame, on="row_id", validate="one_to_one")
        role = merged["role"].to_numpy()
        assert (merged.groupby("site_id")["role"].nunique() == 1).all()
        is_ = {r: role == r for r in ROLES}
        for held in ("test", "val", "stop"):
            assert min_distance(xy, is_[held], is_["train"]) > threshold, held
        assert min_distance(xy, is_["test"], is_["val"] | is_["stop"]) > threshold  # outside the test buffer
        assert ((merged["block"] >= 0) == is_["test"]).all()  # a test row's block, -1 elsewhere
        # the buffer is no wider than the rule: each buffer site has a row within the threshold of a held-out row
        held_out = is_["test"] | is_["val"]
        for site in samples["site_id"][is_["buffer"]].unique():
            assert min_distance(xy, (samples["site_id"] == site).to_numpy(), held_out) <= threshold
        pool = int((is_["train"] | is_["stop"]).sum())
        need_stop = math.ceil(cfg.stop_ratio * pool - 1e-9)
        assert need_stop <= is_["stop"].sum() <= need_stop + largest_site - 1
        assert is_["train"].any() and is_["val"].any()
        tests.append(is_["test"])
        vals.append(is_["val"])
    if cfg.mode == "holdout":
        need_test = math.ceil(cfg.test_ratio * len(samples) - 1e-9)
        assert need_test <= tests[0].sum() <= need_test + largest_site - 1
    else:
        assert (np.sum(tests, axis=0) == num_runs).all()  # every row is tested in exactly one fold's runs
    for group in range(runs // num_runs):  # the runs of a test group (kfold: a fold) share their test rows
        members = range(group * num_runs, (group + 1) * num_runs)
        test = tests[members[0]]
        assert all((tests[k] == test).all() for k in members)
        validated = np.sum([vals[k] for k in members], axis=0)
        assert validated.max() == 1  # the folds: a row validates in one run of its group at most
        # every row outside test and its buffer validates in exactly one run of the group
        near_test = np.array([min_distance(xy, samples["site_id"].to_numpy() == site, test) <= threshold
                              for site in samples["site_id"]])
        assert (validated[~test & ~near_test] == 1).all()


clouds = st.tuples(st.integers(0, 2**31 - 1), st.integers(20, 140), st.floats(5.0, 60.0), st.floats(0.0, 0.8))
configs = st.builds(
    lambda seed, mode, folds, test, stop, threshold, block, strata: SplitConfig(
        seed=seed, mode=mode, folds=folds, test_ratio=test, stop_ratio=stop,
        distance_threshold=threshold, test_block_km=block, strata=strata),
    st.integers(0, 1000), st.sampled_from(["holdout", "kfold"]), st.integers(2, 4), st.floats(0.05, 0.3),
    st.floats(0.03, 0.25), st.floats(0.0, 2.0), st.floats(1.0, 15.0), st.integers(1, 10))


@FEW
@given(cloud=clouds, cfg=configs, num_runs=st.integers(2, 3))
def test_split_keeps_its_guarantees_or_says_why_not(cloud, cfg, num_runs):
    samples = point_cloud(*cloud)
    try:
        split = split_of(samples, cfg, num_runs)
    except SocmapError as exc:
        message = str(exc)
        event(message.split(" = ")[0])
        if "validation folds" in message:
            assert "sites lie outside the test set and its buffer, too few for" in message
            assert message.endswith("split.distance_threshold or raise split.folds (smaller test folds)"
                                    if cfg.mode == "kfold" else "split.test_ratio or split.distance_threshold")
        elif "split.folds" in message:  # fewer blocks with data than folds
            assert cfg.mode == "kfold" and "split.test_block_km" in message
        elif "stop_ratio" in message:
            assert "the largest reachable share below it is" in message
        elif "leaves no rows for training" in message:
            assert "a threshold below" in message
        else:
            assert "lies within it of a" in message and "; lower split.distance_threshold" in message
        return
    event(f"split {cfg.mode}")
    check_guarantees(samples, split, cfg, num_runs)
    pd.testing.assert_frame_equal(split, split_of(samples, cfg, num_runs))  # same seed, same split


def test_a_threshold_wider_than_the_world_is_an_error_naming_the_threshold_that_leaves_rows():
    samples = point_cloud(3, 80, 10.0, 0.0)
    cfg = SplitConfig(distance_threshold=30.0, test_block_km=2.0)
    with pytest.raises(SocmapError, match=r"^split.distance_threshold = 30 km: the buffer around the test set leaves "
                                          r"no rows for training \(each of the \d+ other rows lies that close to a "
                                          r"test row\); a threshold below [\d.]+ km keeps the row farthest from the "
                                          r"test set$") as error:
        split_of(samples, cfg, 2)
    below = float(str(error.value).split("below ")[1].split(" km")[0])
    for threshold in (below + 0.002, below - 1e-6):  # just above the farthest row: the same; just below: it trains
        try:
            split_of(samples, dataclasses.replace(cfg, distance_threshold=threshold), 2)
            message = ""
        except SocmapError as exc:
            message = str(exc)
        assert ("leaves no rows" in message) == (threshold > below), (threshold, message)


def test_too_few_blocks_for_the_folds_is_an_error():
    samples = point_cloud(5, 60, 15.0, 0.0)
    with pytest.raises(SocmapError, match=r"split.folds = 5: the data cover only [1-4] blocks"):
        split_of(samples, SplitConfig(mode="kfold", folds=5, test_block_km=40.0), 2)


def test_seeds_change_the_split_and_runs_differ_in_validation_only():
    samples = point_cloud(6, 600, 80.0, 0.3)
    cfg = SplitConfig(test_block_km=10.0)
    a, b = split_of(samples, cfg, 3), split_of(samples, dataclasses.replace(cfg, seed=1), 3)
    check_guarantees(samples, a, cfg, 3)  # test and buffer the same in every run, the folds partition the rest
    assert not a["role"].equals(b["role"])


def test_stratified_stop_rows_match_training_better_than_unstratified():
    samples = point_cloud(7, 2500, 150.0, 0.3, sigma=1.0)  # lognormal, heavily skewed
    targets = samples.set_index("row_id")["target"]
    ks = {}
    for strata in (1, 10):
        split = split_of(samples, SplitConfig(strata=strata, test_block_km=15.0), 4)
        gaps = [ks_2samp(targets[run[run["role"] == "stop"]["row_id"]], targets[run[run["role"] == "train"]["row_id"]]
                         ).statistic for _, run in split.groupby("run")]
        ks[strata] = np.mean(gaps)
    assert ks[10] < 0.6 * ks[1], ks


def test_validation_is_as_far_from_training_as_the_map():
    samples = point_cloud(8, 800, 100.0, 0.7)  # clustered sites, the map covering the whole square
    prediction = prediction_grid(samples)
    split, knndm = assign_roles(samples, SplitConfig(test_block_km=10.0), 4, prediction)
    metrics, _, _ = split_metrics(samples, split, prediction, knndm)
    median = {kind: q["p50"] for kind, q in metrics["distance_to_train_km"].items()}
    assert abs(median["val"] - median["prediction"]) < 0.35 * median["prediction"], median
    # a random split of the same sites into folds puts validation much nearer training than the map
    assert knndm["all"]["tried"][str(knndm["all"]["clusters"])] < 0.5 * max(knndm["all"]["tried"].values())


def test_metrics_report_sizes_and_the_three_distance_distributions():
    samples = point_cloud(8, 400, 60.0, 0.3)
    prediction = prediction_grid(samples, 12)
    split, knndm = assign_roles(samples, SplitConfig(test_block_km=10.0), 2, prediction)
    metrics, detail, distances = split_metrics(samples, split, prediction, knndm)
    run = detail["runs"]["1"]
    frame = split[split["run"] == 1]
    xy = samples.set_index("row_id").loc[frame["row_id"], ["x", "y"]].to_numpy()
    role = frame["role"].to_numpy()
    assert run["val"]["rows"] == (role == "val").sum() and metrics["runs"] == 2
    brute = {kind: np.sqrt(((points[:, None] - xy[role == "train"][None]) ** 2).sum(axis=2)).min(axis=1)
             for kind, points in (("val", xy[role == "val"]), ("test", xy[role == "test"]), ("prediction", prediction))}
    for kind, d in brute.items():
        assert run["distance_to_train_km"][kind]["p50"] == round(float(np.median(d)) / 1000.0, 3), kind
    assert metrics["min_distance_km"] == round(min(distances["val"].min(), distances["test"].min()), 3)
    assert metrics["min_distance_km"] > 1.2 and metrics["knndm_clusters"] == {"all": knndm["all"]["clusters"]}


def tiny_samples(world) -> pd.DataFrame:
    """samples.parquet as the sample stage writes it, built from the tiny world's clean rows."""
    points = pd.read_csv(world / "points.csv")
    clean = pd.read_parquet(world / "truth.parquet")["dirty"].eq("").to_numpy()
    points = points[clean].reset_index().rename(columns={"index": "row_id"})
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True).transform(
        points["GPS_LONG"].to_numpy(), points["GPS_LAT"].to_numpy())
    by_id = pd.factorize(points["POINTID"])[0]
    # revisits under a new id at the same coordinates join the site of the first
    site = pd.Series(by_id).groupby([points["GPS_LONG"], points["GPS_LAT"]]).transform("min").to_numpy()
    return pd.DataFrame({"row_id": points["row_id"].astype(np.int64), "site_id": site.astype(np.int64),
                         "source_id": points["POINTID"].astype(str), "x": x, "y": y,
                         "lon": points["GPS_LONG"], "lat": points["GPS_LAT"], "year": points["year"],
                         "target": points["OC"], "valid_fraction": 1.0})


@pytest.mark.parametrize("mode", ["holdout", "kfold"])
def test_stage_on_the_tiny_world(tiny_world, tmp_path, monkeypatch, mode):
    samples = tiny_samples(tiny_world)
    params = tiny_params(tiny_world, **{"split.mode": mode, "split.folds": 3, "split.test_block_km": 5.0})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/processed").mkdir(parents=True)
    samples.to_parquet(tmp_path / paths.SAMPLES, index=False)
    pd.DataFrame(prediction_grid(samples), columns=["x", "y"]).to_parquet(tmp_path / paths.PREDICTION_POINTS)
    split_stage.main(params)
    split = pd.read_parquet(tmp_path / paths.SPLIT)
    assert list(split.columns) == ["row_id", "run", "role", "block"]
    assert (tmp_path / paths.SPLIT_PLOTS / "distances.png").stat().st_size > 10_000
    check_guarantees(samples, split, params.split, params.train.num_runs)
    metrics = json.loads((tmp_path / paths.SPLIT_METRICS).read_text())
    assert metrics["rows"] == len(samples) and metrics["runs"] == (3 * 2 if mode == "kfold" else 2)
    assert metrics["min_distance_km"] > params.split.distance_threshold
    assert not list(tmp_path.glob("data/splits/.*.tmp")), "a temporary file was left behind"


def test_stage_without_samples_says_what_to_run(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SocmapError, match="samples.parquet: not found; run `socmap sample` first"):
        split_stage.main(tiny)


def test_stage_rejects_a_bad_sample_table(tmp_path):
    path = tmp_path / "samples.parquet"
    point_cloud(9, 20, 5.0, 0.0).drop(columns="site_id").to_parquet(path)
    with pytest.raises(SocmapError, match="missing columns site_id"):
        split_stage.read_samples(path)
    bad = point_cloud(9, 20, 5.0, 0.0)
    bad.loc[3, "target"] = np.nan
    bad.to_parquet(path)
    with pytest.raises(SocmapError, match=f"target is not finite at row_id {bad.loc[3, 'row_id']}"):
        split_stage.read_samples(path)


def test_sample_then_split_on_the_tiny_world(tiny, tmp_path, monkeypatch):
    from socmap.sample import sample

    monkeypatch.chdir(tmp_path)
    sample(tiny.data, tiny.sample, tmp_path / "data/processed")
    split_stage.main(tiny)
    samples = pd.read_parquet(tmp_path / paths.SAMPLES)
    split = pd.read_parquet(tmp_path / paths.SPLIT)
    check_guarantees(samples, split, tiny.split, tiny.train.num_runs)
    assert samples["site_id"].nunique() < len(samples)  # revisits are there, and were kept together


def held_out_geodesic_km(samples: pd.DataFrame, split: pd.DataFrame) -> float:
    """The smallest geodesic distance (km, WGS 84, from lon and lat) between a test or validation row and a
    training row of the same run, over all runs: brute force, independent of any projection."""
    geod, closest = Geod(ellps="WGS84"), math.inf
    lon, lat = samples["lon"].to_numpy(), samples["lat"].to_numpy()
    for _, frame in split.groupby("run"):
        role = samples[["row_id"]].merge(frame, on="row_id", validate="one_to_one")["role"].to_numpy()
        train, held = np.flatnonzero(role == "train"), np.flatnonzero(np.isin(role, ["test", "val"]))
        a, b = np.repeat(held, train.size), np.tile(train, held.size)
        closest = min(closest, float(geod.inv(lon[a], lat[a], lon[b], lat[b])[2].min()) / 1000.0)
    return closest


def test_too_few_sites_for_the_validation_folds_is_an_error_naming_what_to_lower():
    samples = point_cloud(4, 10, 4.0, 0.0)
    cfg = SplitConfig(distance_threshold=1.0, test_block_km=2.0, test_ratio=0.3)
    with pytest.raises(SocmapError, match=r"^split: only 4 of 10 sites lie outside the test set and its buffer, too few "
                                          r"for 6 validation folds \(one per run of train.num_runs, two for one run\); "
                                          r"lower train.num_runs, split.test_ratio or split.distance_threshold$"):
        split_of(samples, cfg, 6)
    assert split_of(samples, cfg, 4)["run"].nunique() == 4  # four folds of the four sites: it splits


def test_a_lonlat_world_splits_on_the_ground_as_its_metric_twin(tiny_world, knob_world, tmp_path, monkeypatch):
    """The tiny world in EPSG:25832 and warped to EPSG:4326 (Earth Engine's CRS): sample and split each. The
    test-to-train distances agree within a pixel, and in both every held-out row is at least
    split.distance_threshold km on the ground from every training row."""
    from socmap.sample import sample

    runs = {}
    for name, world in (("metric", tiny_world), ("lonlat", knob_world(crs="EPSG:4326"))):
        params = tiny_params(world, **{"split.test_block_km": 5.0})
        monkeypatch.chdir(tmp_path.joinpath(name).mkdir() or tmp_path / name)
        report = sample(params.data, params.sample, paths.PROCESSED)
        split_stage.main(params)
        runs[name] = (report, pd.read_parquet(paths.SAMPLES), pd.read_parquet(paths.SPLIT),
                      json.loads(paths.SPLIT_METRICS.read_text()))
        assert held_out_geodesic_km(runs[name][1], runs[name][2]) >= params.split.distance_threshold
    (metric_report, metric, metric_split, metric_metrics), (report, lonlat, split, metrics) = runs.values()
    assert report["grid"]["crs"] == "EPSG:4326" and report["working_crs"]["from"].startswith("a transverse Mercator")
    assert metric_report["working_crs"] == {"crs": "EPSG:25832", "name": "ETRS89 / UTM zone 32N",
                                            "from": "the grid's CRS",
                                            "scale": pytest.approx([0.99996, 1.00007], abs=1e-5)}
    assert 0.99999 < report["working_crs"]["scale"][0] <= report["working_crs"]["scale"][1] <= 1.0
    pixel_m = 1000.0 * min(report["grid"]["res"]) / report["grid"]["res"][1] * math.cos(math.radians(48.43))
    # the metric world's test rows, measured to its training rows in each world's x, y: the same distances
    both = metric[["row_id", "x", "y"]].merge(lonlat[["row_id", "x", "y"]], on="row_id", suffixes=("", "_ll"))
    assert len(both) == len(metric) == len(lonlat)
    roles = both[["row_id"]].merge(metric_split[metric_split["run"] == 0], on="row_id")["role"].to_numpy()
    for columns in (["x", "y"], ["x_ll", "y_ll"]):
        xy = both[columns].to_numpy()
        nearest = cKDTree(xy[roles == "train"]).query(xy[roles == "test"])[0]
        runs[columns[0]] = nearest
    assert np.abs(runs["x"] - runs["x_ll"]).max() < min(pixel_m, 5e-4 * runs["x"].max())
    for figures in (metrics, metric_metrics):  # what split.json reports, measured in each world's x, y
        assert figures["min_distance_km"] >= params.split.distance_threshold - pixel_m / 1000.0
