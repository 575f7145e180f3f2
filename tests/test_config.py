"""params.yaml validation: every kind of bad value is a one-line error naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from socmap.config import Params, load_params, params_from_dict, params_to_dict, replace
from socmap.errors import SocmapError

from conftest import ROOT


def test_params_yaml_holds_every_default():
    assert load_params(ROOT / "params.yaml") == Params()


def test_every_design_key_exists():
    raw = params_to_dict(Params())
    for section, keys in {
        "data": ["rasters", "bands", "static_bands", "first_year", "last_year", "points", "region", "max_target"],
        "sample": ["window_size", "time_before"],
        "split": ["seed", "test_ratio", "stop_ratio", "distance_threshold"],
        "train": ["model", "loss_type", "loss_alpha", "target_transform", "lr", "batch_size", "epochs",
                  "num_runs", "balanced", "seed"],
        "map": ["years"],
    }.items():
        assert set(keys) <= set(raw[section]), section
    assert set(raw["data"]["points"]["columns"]) >= {"id", "x", "y", "year", "target"}
    assert raw["data"]["region"]["boundary"] is None


def bad(key: str, value):
    """Params with one dotted key set to `value` (the key need not exist)."""
    raw = params_to_dict(Params())
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("key, value, message", [
    ("train.los_type", "mse", r"unknown key train\.los_type; did you mean train\.loss_type\?"),
    ("tran.lr", 0.1, r"unknown key tran; did you mean train\?"),
    ("train.loss_type", "huber", r"train\.loss_type = 'huber': must be one of l1, mse, composite_l1, composite_l2"),
    ("train.target_transform", "sqrt", r"train\.target_transform = 'sqrt': must be one of none, log, normalize"),
    ("train.model", "transformer", r"train\.model = 'transformer': must be one of refitted_cov_lstm, cnn, lstm"),
    ("train.epochs", "ten", r"train\.epochs = 'ten': must be an integer"),
    ("train.epochs", 2.5, r"train\.epochs = 2\.5: must be an integer"),
    ("train.epochs", 0, r"train\.epochs = 0: must be >= 1"),
    ("train.lr", -0.1, r"train\.lr = -0\.1: must be > 0 and <= 1"),
    ("train.lr", None, r"train\.lr = None: must be a number"),
    ("train.balanced", "yes", r"train\.balanced = 'yes': must be true or false"),
    ("train.tta", True, r"train\.tta = True: must be one of 1, 2, 4, 8"),
    ("train.tta", 3, r"train\.tta = 3: must be one of 1, 2, 4, 8"),
    ("train.augment", True, r"train\.augment = True: must be one of none, mirror, turns, dihedral"),
    ("train.loss_alpha", 1.5, r"train\.loss_alpha = 1\.5: must be >= 0 and <= 1"),
    ("sample.window_size", 4, r"sample\.window_size = 4: must be odd"),
    ("split.test_ratio", 1.0, r"split\.test_ratio = 1\.0: must be > 0 and < 1"),
    ("data.bands", "LAI", r"data\.bands = 'LAI': must be a list"),
    ("data.region.bbox", [1, 2, 3], r"data\.region\.bbox = \[1, 2, 3\]: must be a list of 4 values"),
    ("data.region.bbox", [14, 47, 9, 50], r"data\.region\.bbox = \[14\.0, 47\.0, 9\.0, 50\.0\]: must be \[west, south"),
    ("data.static_bands", ["Slope"], r"data\.static_bands = \['Slope'\]: 'Slope' is not in data\.bands"),
    ("data.first_year", 2030, r"data\.first_year = 2030 is after data\.last_year = 2023"),
    ("data.points.unit", "mg/g", r"data\.points\.unit = 'mg/g': must be one of g/kg, %"),
    ("data.rasters.yearly", "{band}.tif", r"data\.rasters\.yearly = '\{band\}\.tif': must contain \{year\}"),
    ("data.rasters.yearly", "{bnd}/{year}.tif", r"data\.rasters\.yearly = '\{bnd\}/\{year\}\.tif': unknown placeholder "
                                                r"\{bnd\}; use \{band\} and \{year\}"),
    ("data.rasters.static", "{year}.tif", r"data\.rasters\.static = '\{year\}\.tif': unknown placeholder \{year\}; "
                                          r"use \{band\}"),
    ("data.rasters.static", "{band/x.tif", r"data\.rasters\.static = '\{band/x\.tif': not a path pattern"),
    ("data.grid.crs", "EPSG:99999", r"data\.grid\.crs = 'EPSG:99999': not a CRS"),
    ("data.grid.resolution", 0, r"data\.grid\.resolution = 0\.0: must be > 0"),
    ("data.grid.extent", [1, 2, 3], r"data\.grid\.extent = \[1, 2, 3\]: must be a list of 4 values"),
    ("data.grid.extent", [5, 0, 1, 9], r"data\.grid\.extent = \[5\.0, 0\.0, 1\.0, 9\.0\]: must be \[west, south, east, "
                                       r"north\]"),
    ("data.region.boundary", "/elsewhere/bavaria.gpkg",
     r"data\.region\.boundary = '/elsewhere/bavaria\.gpkg': must be a file under data/region/ \(e\.g\. "
     r"data/region/bavaria\.gpkg\), the folder that sample, evaluate and map depend on"),
    ("data.region.boundary", "data/region",
     r"data\.region\.boundary = 'data/region': must be a file under data/region/"),
    ("map.years", [2008], r"map\.years has 2008: must be in 2011\.\.2023"),
    ("simulate.latency_band", "NDVI", r"simulate\.latency_band = 'NDVI': must be one of LAI, LST"),
    ("simulate.static_resolution_m", 300, r"simulate\.resolution_m / simulate\.static_resolution_m = 3\.33333"),
    ("split.target_val_ratio", 0.1, r"split\.target_val_ratio is gone: validation is one fold per run .* "
                                     r"split\.stop_ratio; remove it"),
    ("simulate.worlds", ["synthetic"], r"simulate\.worlds = \['synthetic'\]: must be a mapping of world name to its settings"),
    ("simulate.worlds", {"my world": {}}, r"simulate\.worlds has 'my world': a world name is letters, digits, _ and -"),
    ("simulate.worlds.steep", 9, r"simulate\.worlds\.steep = 9: must be a mapping of simulate keys"),
    ("simulate.worlds.steep.contex_km", 9,
     r"unknown key simulate\.worlds\.steep\.contex_km; did you mean simulate\.worlds\.steep\.context_km\?"),
    ("simulate.worlds.steep.aspect_effect", 3, r"simulate\.worlds\.steep\.aspect_effect = 3\.0: must be >= -1 and <= 1"),
    ("simulate.worlds.steep.first_year", 2030,
     r"simulate\.worlds\.steep\.first_year = 2030 is after simulate\.worlds\.steep\.last_year = 2023"),
    ("simulate.worlds.steep.worlds", {}, r"simulate\.worlds\.steep\.worlds: a world's settings cannot hold worlds"),
    ("simulate.context_km", 1.5, r"simulate\.context_km = 1\.5: must span at least 3 pixels of simulate\.resolution_m"),
    ("simulate.history_years", 30, r"simulate\.history_years = 30: longer than the 17 years"),
    ("simulate.history_weighting", "linear", r"simulate\.history_weighting = 'linear': must be one of uniform, recent"),
    ("simulate.latent_classes", 1, r"simulate\.latent_classes = 1: must be 0 \(none\) or 2 to 12"),
    ("simulate.crs", "EPSG:4258", r"simulate\.crs = 'EPSG:4258': must be a projected CRS in metres .* or EPSG:4326"),
    ("simulate.crs", "EPSG:999999", r"simulate\.crs = 'EPSG:999999': not a CRS"),
    ("simulate.layout", "cog", r"simulate\.layout = 'cog': must be one of single_band, multiband, tiled"),
])
def test_bad_value_names_key_and_what_is_valid(key, value, message):
    with pytest.raises(SocmapError, match=message):
        params_from_dict(bad(key, value))


def test_a_world_is_the_simulate_keys_with_its_own_overrides():
    raw = bad("simulate.worlds", {"synthetic": {}, "steep": {"context_km": 9, "bbox": [11, 48, 12, 49]}})
    simulate = params_from_dict(raw).simulate
    assert simulate.world("synthetic") == simulate
    steep = simulate.world("steep")
    assert (steep.context_km, steep.bbox, steep.seed) == (9.0, (11.0, 48.0, 12.0, 49.0), simulate.seed)
    assert params_to_dict(params_from_dict(raw))["simulate"]["worlds"]["steep"]["bbox"] == [11.0, 48.0, 12.0, 49.0]
    with pytest.raises(SocmapError, match=r"simulate\.worlds has no world 'flat': worlds are synthetic, steep"):
        simulate.world("flat")
    assert params_from_dict(bad("simulate.worlds", {})).simulate.worlds == {}


def test_replace_validates():
    assert replace(Params(), **{"train.epochs": 3}).train.epochs == 3
    with pytest.raises(SocmapError, match="train.epochs"):
        replace(Params(), **{"train.epochs": -3})


def test_params_are_frozen():
    params = Params()
    with pytest.raises(AttributeError):
        params.train.lr = 1.0  # type: ignore[misc]
    assert isinstance(params.data.bands, tuple)


def test_cli_prints_one_line_without_traceback(tmp_path):
    raw = bad("train.loss_type", "huber")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "socmap.cli", "simulate"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["socmap simulate: error: params.yaml: train.loss_type = 'huber': "
                     "must be one of l1, mse, composite_l1, composite_l2"]
    assert not (tmp_path / "data").exists()


def test_cli_reports_missing_and_broken_params_files(tmp_path):
    run = lambda: subprocess.run([sys.executable, "-m", "socmap.cli", "simulate"], cwd=tmp_path,  # noqa: E731
                                 capture_output=True, text=True)
    result = run()
    assert result.returncode == 2 and "params.yaml: params file not found" in result.stderr
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    result = run()
    assert result.returncode == 2 and "params.yaml: not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr
