"""The sample stage end to end on the tiny simulated world: outputs, accounting, determinism, layouts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyogrio.raw
import pytest
import rasterio
import shapely
import yaml
from pyproj import Transformer

from conftest import tiny_params
from socmap import cli
from socmap.config import params_to_dict
from socmap.points import REASONS
from socmap.rasters import RasterCatalog
from socmap.sample import SAMPLE_COLUMNS, sample


@pytest.fixture(scope="module")
def tiny_run(tiny_world, tmp_path_factory):
    """The stage run once on the tiny world with the repository's params."""
    out = tmp_path_factory.mktemp("processed")
    params = tiny_params(tiny_world)
    return params, sample(params.data, params.sample, out), out


@pytest.fixture(scope="module")
def outputs(tiny_run):
    """The stage's params and report, and its patches (memory-mapped) and sample table."""
    params, report, out = tiny_run
    return params, report, np.load(out / "patches.npy", mmap_mode="r"), pd.read_parquet(out / "samples.parquet")


def test_outputs_and_report_account_for_every_row(tiny_run, outputs, tiny_world):
    params, report, patches, samples = outputs
    out = tiny_run[2]
    points = pd.read_csv(tiny_world / "points.csv")
    assert report == json.loads((out / "report.json").read_text())
    assert report["rows_read"] == len(points) == report["rows_kept"] + sum(report["drops"].values())
    assert set(report["drops"]) == set(REASONS) | {"low_valid_fraction"}
    assert patches.shape == (len(samples), 6, 5, 5, 3) and patches.dtype == np.float32
    assert not np.isnan(patches).any()
    assert list(samples.columns) == SAMPLE_COLUMNS and samples["row_id"].is_monotonic_increasing
    assert samples["row_id"].dtype == np.int64 and samples["site_id"].dtype == np.int64
    assert (samples["valid_fraction"] >= params.sample.min_valid_fraction).all()
    # what the simulator spoilt is dropped for that reason (an earlier reason may claim a row first)
    truth = pd.read_parquet(tiny_world / "truth.parquet").set_index("row_id")
    assert truth.loc[samples["row_id"], "dirty"].eq("").all()
    for reason in ("missing_target", "above_max_target", "outside_region", "duplicate"):
        assert report["drops"][reason] == (truth["dirty"] == reason).sum()
    assert report["grid"]["res"] == [1000.0, 1000.0] and report["grid"]["crs"] == "EPSG:25832"
    assert [w["band"] for w in report["warped"]] == ["Elevation"]  # 500 m onto the 1 km grid
    assert report["fills"]["missing_band_years"] == {"SoilEvaporation": {"2020": 2019}}
    np.testing.assert_allclose(samples["target"], points.loc[samples["row_id"], "OC"])


def test_patch_centres_are_the_raster_values_at_each_row(outputs, tiny_world):
    params, _, patches, samples = outputs
    catalog = RasterCatalog.open(params.data)
    row, col = catalog.grid.index(samples["x"].to_numpy(), samples["y"].to_numpy())
    for year_back in range(3):  # t = 2 is the survey year, t = 0 two years before
        for i in np.flatnonzero(samples["year"].to_numpy() - year_back <= 2019)[:40]:
            year = samples["year"].iat[i] - year_back
            with rasterio.open(tiny_world / "rasters" / "LAI" / f"{year}.tif") as ds:
                value = ds.read(1)[row[i], col[i]]
            if value != ds.nodata:
                assert patches[i, 1, 2, 2, 2 - year_back] == value


def test_same_inputs_give_identical_outputs(tiny_run, tmp_path):
    params, report, out = tiny_run
    assert sample(params.data, params.sample, tmp_path) == report
    for name in ("patches.npy", "samples.parquet", "report.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_early_years_fill_and_min_valid_fraction(tiny_world, tiny_run, tmp_path):
    _, base, _ = tiny_run
    params = tiny_params(tiny_world, **{"sample.early_years": "fill", "sample.min_valid_fraction": 0.99,
                                        "sample.fill": "zero"})
    report = sample(params.data, params.sample, tmp_path)
    assert report["drops"]["early_years"] == 0
    assert report["fills"]["early_years_rows"] == base["drops"]["early_years"] > 0
    assert report["drops"]["low_valid_fraction"] > 0
    assert report["rows_read"] == report["rows_kept"] + sum(report["drops"].values())
    patches = np.load(tmp_path / "patches.npy")
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    assert len(patches) == len(samples) == report["rows_kept"] and (samples["valid_fraction"] >= 0.99).all()
    assert set(report["fill_values"].values()) == {0.0}


def test_lucas_and_shapefile_layouts_need_no_code_change(tiny_world, tiny_run, tmp_path):
    """The tiny world's table as LUCAS 2018 columns, and as a shapefile in EPSG:25832 with SOC in %."""
    _, base, base_out = tiny_run
    base_samples = pd.read_parquet(base_out / "samples.parquet")
    points = pd.read_csv(tiny_world / "points.csv")
    lucas = points.rename(columns={"GPS_LONG": "TH_LONG", "GPS_LAT": "TH_LAT", "survey_date": "SURVEY_DATE"})
    lucas["SURVEY_DATE"] = pd.to_datetime(lucas["SURVEY_DATE"]).dt.strftime("%d/%m/%y")
    lucas.drop(columns="year").to_csv(tmp_path / "lucas.csv", index=False)
    params = tiny_params(tiny_world, **{
        "data.points.path": str(tmp_path / "lucas.csv"),
        "data.points.columns": {"id": "POINTID", "x": "TH_LONG", "y": "TH_LAT", "target": "OC", "year": None,
                                "date": "SURVEY_DATE"}})
    report = sample(params.data, params.sample, tmp_path / "lucas")
    assert report["drops"] == base["drops"]
    assert (tmp_path / "lucas" / "patches.npy").read_bytes() == (base_out / "patches.npy").read_bytes()

    in_2018 = points[(points["year"] == 2018) & points["GPS_LONG"].notna()]
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:25832", always_xy=True).transform(in_2018["GPS_LONG"],
                                                                                       in_2018["GPS_LAT"])
    pyogrio.raw.write(tmp_path / "soil.shp", shapely.to_wkb(shapely.points(np.c_[x, y])),
                      [in_2018["POINTID"].to_numpy(), in_2018["OC"].to_numpy() / 10.0], fields=["ID", "SOC"],
                      geometry_type="Point", crs="EPSG:25832", driver="ESRI Shapefile")
    params = tiny_params(tiny_world, **{
        "data.points.path": str(tmp_path / "soil.shp"), "data.points.unit": "%", "data.points.year": 2018,
        "data.points.columns": {"id": "ID", "x": "x", "y": "y", "target": "SOC", "year": None, "date": None}})
    report = sample(params.data, params.sample, tmp_path / "shp")
    shp = pd.read_parquet(tmp_path / "shp" / "samples.parquet")
    expected = base_samples[base_samples["year"] == 2018]
    assert report["rows_read"] == len(in_2018) and len(shp) == len(expected) > 10
    np.testing.assert_allclose(shp["target"], expected["target"], rtol=1e-6)
    np.testing.assert_allclose(shp[["x", "y"]], expected[["x", "y"]], atol=0.01)
    base_patches = np.load(base_out / "patches.npy")[expected.index]
    np.testing.assert_array_equal(np.load(tmp_path / "shp" / "patches.npy"), base_patches)


def test_cli_runs_the_stage_and_reports_errors(tiny_world, tmp_path, monkeypatch, capsys):
    params = tiny_params(tiny_world)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-q", "sample"]) == 0
    report = json.loads((tmp_path / "data" / "processed" / "report.json").read_text())
    assert report["rows_read"] == report["rows_kept"] + sum(report["drops"].values())
    broken = params_to_dict(params)
    broken["data"]["points"]["columns"]["target"] = "SOC"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken))
    assert cli.main(["-q", "sample"]) == 2
    assert "data.points.columns.target = 'SOC': no such column in points.csv" in capsys.readouterr().err


LAYOUTS = {"multiband": {"data.rasters.yearly": "{year}.tif"},
           "tiled": {"data.rasters.yearly": "{band}/{year}-*.tif", "data.rasters.static": "{band}/static-*.tif"}}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_same_pixels_in_one_file_a_year_or_in_tiles_give_identical_patches(tiny_run, knob_world, tmp_path, layout):
    """The tiny world written as one multi-band file a year (Elevation alone) or as Earth Engine's 2 × 2 tiles
    of every file: only data.rasters changes, and the stage writes the same patches and table."""
    _, base, base_out = tiny_run
    params = tiny_params(knob_world(layout=layout), **LAYOUTS[layout])
    report = sample(params.data, params.sample, tmp_path)
    for name in ("patches.npy", "samples.parquet"):
        assert (tmp_path / name).read_bytes() == (base_out / name).read_bytes(), name
    assert (report["drops"], report["fills"], report["grid"]) == (base["drops"], base["fills"], base["grid"])
    (elevation,) = report["warped"]
    assert elevation["band"] == "Elevation" and elevation.get("tiles") == (4 if layout == "tiled" else None)
