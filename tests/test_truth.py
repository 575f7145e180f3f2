"""A simulated world's truth: carried by the sample stage for the rows it keeps, read by evaluate, absent for
real data, checked against the rows, never an input of training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from socmap import paths
from socmap.errors import SocmapError
from socmap.truth import carry_truth, load_truth

from test_dvc_yaml import closure


@pytest.fixture
def world(tmp_path):
    """A world folder as simulate writes it: points.csv, truth.parquet of 6 rows, oracle.json."""
    folder = tmp_path / "world"
    folder.mkdir()
    (folder / paths.WORLD_POINTS).write_text("POINTID,OC\n")
    pd.DataFrame({"row_id": np.arange(6), "POINTID": np.arange(6), "year": 2015 + np.arange(6),
                  "truth": 10.0 + np.arange(6), "truth_covariates": 20.0 + np.arange(6), "cover": "cropland",
                  "dirty": ""}).to_parquet(folder / paths.WORLD_TRUTH)
    (folder / paths.WORLD_ORACLE).write_text(json.dumps({"r2_full": 0.9, "r2_covariates": 0.7, "rows": 6}))
    return folder


def test_sample_carries_the_truth_of_the_kept_rows_in_their_order(world, tmp_path):
    samples = pd.DataFrame({"row_id": [4, 1, 3], "year": [2019, 2016, 2018]})
    account = carry_truth(world / paths.WORLD_POINTS, samples, tmp_path / "truth.parquet")
    assert account == {"source": str(world / paths.WORLD_TRUTH), "rows": 3,
                       "oracle": {"r2_full": 0.9, "r2_covariates": 0.7}}
    written = pd.read_parquet(tmp_path / "truth.parquet")
    assert written.columns.tolist() == ["row_id", "year", "truth", "truth_covariates"]  # no cover, no dirty
    assert written["row_id"].tolist() == [4, 1, 3] and written["truth"].tolist() == [14.0, 11.0, 13.0]
    truth = load_truth(samples, {"truth": account}, tmp_path / "truth.parquet")
    assert truth.table["truth_covariates"].tolist() == [24.0, 21.0, 23.0] and truth.oracle["r2_full"] == 0.9


def test_real_data_give_a_table_without_rows_and_no_ceiling(tmp_path):
    (tmp_path / "lucas.csv").write_text("POINTID,OC\n")
    samples = pd.DataFrame({"row_id": [0, 1], "year": [2018, 2018]})
    account = carry_truth(tmp_path / "lucas.csv", samples, tmp_path / "truth.parquet")
    assert account == {"source": None, "rows": 0, "oracle": None}
    assert pd.read_parquet(tmp_path / "truth.parquet").columns.tolist() == ["row_id", "year", "truth",
                                                                            "truth_covariates"]
    assert load_truth(samples, {"truth": account}, tmp_path / "truth.parquet") is None


def test_a_truth_of_other_rows_names_the_file_and_the_fix(world, tmp_path):
    with pytest.raises(SocmapError, match=r"truth.parquet: no row_id 9 of .*points.csv; the truth belongs to "
                                          r"another world: rerun `socmap simulate`"):
        carry_truth(world / paths.WORLD_POINTS, pd.DataFrame({"row_id": [1, 9], "year": [2016, 2024]}),
                    tmp_path / "truth.parquet")
    with pytest.raises(SocmapError, match="truth.parquet: years differ from .*points.csv for the same row_id"):
        carry_truth(world / paths.WORLD_POINTS, pd.DataFrame({"row_id": [1], "year": [2020]}),
                    tmp_path / "truth.parquet")
    carry_truth(world / paths.WORLD_POINTS, pd.DataFrame({"row_id": [1, 2], "year": [2016, 2017]}),
                tmp_path / "truth.parquet")
    with pytest.raises(SocmapError, match=r"truth.parquet: rows differ from data/processed/samples.parquet; "
                                          r"rerun `socmap sample`"):
        load_truth(pd.DataFrame({"row_id": [2, 1]}), {}, tmp_path / "truth.parquet")
    with pytest.raises(SocmapError, match="nothing.parquet: not found; run `socmap sample` first"):
        load_truth(pd.DataFrame({"row_id": [2, 1]}), {}, tmp_path / "nothing.parquet")


def test_the_truth_never_reaches_a_model():
    from socmap.sample import SAMPLE_COLUMNS

    assert not {"truth", "truth_covariates"} & set(SAMPLE_COLUMNS)  # samples.parquet, which train reads
    assert "truth" not in closure("train") and "truth" in closure("evaluate")
