"""Survey tables: every format, column mapping, CRS and unit handling, and each cleaning reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyogrio.raw
import pytest
import shapely
from pyproj import Transformer
from rasterio.crs import CRS as RioCRS
from rasterio.transform import from_origin

from socmap.config import Params, replace
from socmap.errors import SocmapError
from socmap.points import REASONS, clean, read_survey, site_ids
from socmap.grid import GridSpec
from socmap.region import Region

# a 20 km × 20 km grid of 1 km pixels in UTM 32N, north of Munich
GRID = GridSpec(RioCRS.from_epsg(25832), from_origin(680_000.0, 5_370_000.0, 1000.0, 1000.0), 20, 20)
TO_LONLAT = Transformer.from_crs("EPSG:25832", "EPSG:4326", always_xy=True)


def lonlat(x, y):
    lon, lat = TO_LONLAT.transform(x, y)
    return round(float(lon), 7), round(float(lat), 7)


INSIDE = lonlat(690_500.0, 5_360_500.0)  # pixel (9, 10)
OTHER = lonlat(685_200.0, 5_365_100.0)  # pixel (4, 5)
OFF_GRID = lonlat(679_000.0, 5_360_500.0)  # inside the bbox, west of the grid


def params(**overrides) -> Params:
    """Params for a table over GRID: region bbox around it, years 2010-2020, time_before 3."""
    return replace(Params(), **{"data.region.bbox": [11.0, 48.0, 12.5, 48.6], "data.first_year": 2010,
                                "data.last_year": 2020, "sample.time_before": 3, "map.years": [2020],
                                **overrides})


def run_clean(p: Params, early_years="drop"):
    survey = read_survey(p.data.points)
    return clean(survey, p.data, p.sample.time_before, early_years, GRID, Region.from_config(p.data.region))


def hand_made(tmp_path) -> str:
    """One row per drop reason, plus kept rows."""
    rows = [
        ("keep1", *INSIDE, "2015", "20.5"),
        ("keep2", *OTHER, "2018", "3,5"),  # decimal comma
        ("nocoord", "", INSIDE[1], "2015", "20"),
        ("badcoord", "eleven", INSIDE[1], "2015", "20"),
        ("notarget", *INSIDE, "2015", ""),
        ("badtarget", *INSIDE, "2015", "<LOD"),
        ("zero", *INSIDE, "2015", "0"),
        ("high", *INSIDE, "2015", "151"),
        ("noyear", *INSIDE, "", "20"),
        ("outside", 13.0, 49.5, "2015", "20"),
        ("offgrid", *OFF_GRID, "2015", "20"),
        ("future", *INSIDE, "2021", "20"),
        ("early", *INSIDE, "2011", "20"),
        ("keep1", *INSIDE, "2015", "20.5"),  # exact duplicate of the first row
    ]
    path = tmp_path / "survey.csv"
    pd.DataFrame(rows, columns=["POINTID", "GPS_LONG", "GPS_LAT", "year", "OC"]).to_csv(path, sep=";", index=False)
    return str(path)


def test_each_drop_reason_on_a_hand_made_table(tmp_path):
    p = params(**{"data.points.path": hand_made(tmp_path)})
    kept, drops, early = run_clean(p)
    # the row off the raster grid counts as outside the region too
    assert drops == {reason: 2 if reason == "outside_region" else 1 for reason in REASONS}
    assert sum(drops.values()) + len(kept) == 14
    assert kept["source_id"].tolist() == ["keep1", "keep2"] and kept["row_id"].tolist() == [0, 1]
    assert kept["target"].tolist() == [20.5, 3.5] and kept["year"].tolist() == [2015, 2018]
    assert kept[["row", "col"]].values.tolist() == [[9, 10], [4, 5]]
    np.testing.assert_allclose(kept[["x", "y"]].values, [[690_500.0, 5_360_500.0], [685_200.0, 5_365_100.0]],
                               atol=0.05)
    assert early == 0
    kept, drops, early = run_clean(p, early_years="fill")
    assert drops["early_years"] == 0 and early == 1 and "early" in kept["source_id"].tolist()


def test_lucas_2018_columns_with_a_survey_date(tmp_path):
    table = pd.DataFrame({"POINTID": [44283152, 44283153, 44283154],
                          "TH_LONG": [INSIDE[0], OTHER[0], INSIDE[0]], "TH_LAT": [INSIDE[1], OTHER[1], INSIDE[1]],
                          "OC": [21.3, 45.0, 18.2], "SURVEY_DATE": ["06/07/18", "2018-08-30", "13/05/15"]})
    path = tmp_path / "lucas.parquet"
    table.to_parquet(path)
    p = params(**{"data.points.path": str(path),
                  "data.points.columns": {"id": "POINTID", "x": "TH_LONG", "y": "TH_LAT", "target": "OC",
                                          "year": None, "date": "SURVEY_DATE"}})
    kept, drops, _ = run_clean(p)
    assert kept["year"].tolist() == [2018, 2018, 2015] and sum(drops.values()) == 0
    assert kept["source_id"].tolist() == ["44283152", "44283153", "44283154"]
    # the first and third rows share coordinates: one site
    assert kept["site_id"].tolist()[0] == kept["site_id"].tolist()[2] != kept["site_id"].tolist()[1]


def test_shapefile_in_utm_with_percent_and_no_year_column(tmp_path):
    path = tmp_path / "soil.shp"
    points = shapely.points([[690_500.0, 5_360_500.0], [685_200.0, 5_365_100.0]])
    pyogrio.raw.write(path, shapely.to_wkb(points), [np.array(["a1", "b2"]), np.array([2.05, 1.5])],
                      fields=["SITE", "SOC"], geometry_type="Point", crs="EPSG:25832", driver="ESRI Shapefile")
    p = params(**{"data.points.path": str(path), "data.points.unit": "%", "data.points.year": 2018,
                  "data.points.columns": {"id": "SITE", "x": "unused", "y": "unused", "target": "SOC",
                                          "year": None, "date": None}})
    kept, drops, _ = run_clean(p)
    assert sum(drops.values()) == 0
    assert kept["target"].tolist() == pytest.approx([20.5, 15.0]) and kept["year"].tolist() == [2018, 2018]
    assert kept[["row", "col"]].values.tolist() == [[9, 10], [4, 5]]
    assert read_survey(p.data.points).crs.to_epsg() == 25832


def test_xlsx_and_geopackage_read_the_same_rows(tmp_path):
    table = pd.DataFrame({"POINTID": ["p1", "p2"], "GPS_LONG": [INSIDE[0], OTHER[0]],
                          "GPS_LAT": [INSIDE[1], OTHER[1]], "year": [2015, 2016], "OC": [12.0, 30.0]})
    table.to_excel(tmp_path / "s.xlsx", index=False)
    wkb = shapely.to_wkb(shapely.points(table[["GPS_LONG", "GPS_LAT"]].to_numpy()))
    pyogrio.raw.write(tmp_path / "s.gpkg", wkb, [table["POINTID"].to_numpy(), table["year"].to_numpy(),
                                                 table["OC"].to_numpy()],
                      fields=["POINTID", "year", "OC"], geometry_type="Point", crs="EPSG:4326", driver="GPKG")
    results = [run_clean(params(**{"data.points.path": str(tmp_path / name)}))[0] for name in ("s.xlsx", "s.gpkg")]
    for kept in results:
        assert kept["target"].tolist() == [12.0, 30.0]
        assert kept[["row", "col"]].values.tolist() == [[9, 10], [4, 5]]


def test_missing_column_is_an_error_listing_the_columns(tmp_path):
    pd.DataFrame({"ID": [1], "LON": [11.5], "LAT": [48.3], "year": [2015], "SOC": [20.0]}).to_csv(
        tmp_path / "t.csv", index=False)
    p = params(**{"data.points.path": str(tmp_path / "t.csv"), "data.points.columns.id": "ID",
                  "data.points.columns.x": "LON", "data.points.columns.y": "LAT"})
    with pytest.raises(SocmapError, match=r"data.points.columns.target = 'OC': no such column in t.csv; "
                                          r"columns present: ID, LON, LAT, year, SOC"):
        read_survey(p.data.points)
    with pytest.raises(SocmapError, match=r"data.points.columns.id = 'POINTID'.*null to number the rows"):
        read_survey(replace(p, **{"data.points.columns.id": "POINTID",
                                  "data.points.columns.target": "SOC"}).data.points)
    survey = read_survey(replace(p, **{"data.points.columns.id": None,
                                       "data.points.columns.target": "SOC"}).data.points)
    assert survey.frame["source_id"].tolist() == ["0"]


def test_unknown_crs_and_file_type_are_errors(tmp_path):
    path = hand_made(tmp_path)
    with pytest.raises(SocmapError, match=r"data.points.crs = 'EPSG:999999': unknown CRS"):
        read_survey(params(**{"data.points.path": path, "data.points.crs": "EPSG:999999"}).data.points)
    (tmp_path / "s.dbx").write_text("x")
    with pytest.raises(SocmapError, match=r"unknown file type '.dbx'"):
        read_survey(params(**{"data.points.path": str(tmp_path / "s.dbx")}).data.points)


def test_site_ids_chain_same_id_and_same_coordinates():
    ids = np.array(["L1", "L1", "S1", "S2", "S3", ""], dtype=object)
    x = np.array([1.0, 1.1, 1.1, 5.0, 5.0, 9.0])
    y = np.array([2.0, 2.1, 2.1, 6.0, 6.0, 9.0])
    # L1 revisited with a new GPS reading; S1 at L1's second reading; S2/S3 one location under new ids
    assert site_ids(ids, x, y).tolist() == [0, 0, 0, 1, 1, 2]
