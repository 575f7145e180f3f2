"""The evaluate stage: the roles of every row and run checked against the split, the stage end to end on the
tiny world in both split modes."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from figures import BASELINES, assert_figures, hand_made, sklearn_figures
from socmap.baselines import baseline_names
from socmap.config import EvaluateConfig
from socmap.errors import SocmapError
from socmap.evaluate import read_design
from socmap.split import roles_matrix
from socmap.kriging import load_fields
from socmap.scoring import Design, headline, score


def test_roles_matrix_and_split_errors():
    split = pd.DataFrame({"row_id": [1, 2, 1, 2], "run": [0, 0, 1, 1], "role": ["train", "test", "val", "test"]})
    assert roles_matrix(split, np.array([2, 1]), 2).tolist() == [["test", "train"], ["test", "val"]]
    with pytest.raises(SocmapError, match="row_id 3 .* has no role"):
        roles_matrix(split, np.array([1, 3]), 2)
    with pytest.raises(SocmapError, match=r"runs \[0, 1\] but models/ holds run_0..run_2"):
        roles_matrix(split, np.array([1, 2]), 3)
    samples, design, predictions, baselines = hand_made("kfold")
    with pytest.raises(SocmapError, match="test rows differ between runs"):
        score(samples, predictions, Design("holdout", design.roles, design.blocks, design.groups), baselines,
              EvaluateConfig(bootstrap=0))
    split = split.assign(block=[-1, 4, -1, 4])
    assert read_design(split, np.array([2, 1]), 2, "holdout").blocks.tolist() == [4, -1]


@pytest.mark.parametrize("mode, kriging", [("holdout", "log"), ("kfold", "log"), ("holdout", "none")])
def test_stage_end_to_end_on_the_tiny_world(tiny_world, tmp_path, monkeypatch, mode, kriging):
    from socmap import baselines as forests
    from socmap import sample, split, train
    from socmap import evaluate as stage
    from conftest import tiny_params

    params = tiny_params(tiny_world, **{"train.epochs": 1, "train.num_runs": 3, "split.test_ratio": 0.2,
                                        "split.mode": mode, "split.folds": 3, "evaluate.rf_min_samples_leaf": [2, 10],
                                        "evaluate.kriging": kriging})
    monkeypatch.chdir(tmp_path)
    for module in (sample, split, train, forests, stage):
        module.main(params)
    metrics = json.loads((tmp_path / "plots/evaluate/details.json").read_text())
    assert json.loads((tmp_path / "metrics/evaluate/metrics.json").read_text()) == headline(metrics)
    table = pd.read_csv(tmp_path / "plots/evaluate/predictions.csv")
    split_table = pd.read_parquet(tmp_path / "data/splits/split.parquet")
    test_ids = split_table[(split_table["run"] == 0) & (split_table["role"] == "test")]["row_id"]
    if mode == "kfold":  # every row is test in exactly one fold, in each of its 3 runs
        tested = split_table[split_table["role"] == "test"]["row_id"].value_counts()
        assert (tested == 3).all() and len(tested) == len(pd.read_parquet(tmp_path / "data/processed/samples.parquet"))
        test_ids = tested.index
    assert sorted(table["row_id"]) == sorted(test_ids)
    assert_figures(metrics, sklearn_figures(table["observed"], table["ensemble"]))
    baselines = BASELINES if kriging == "log" else baseline_names("none")
    assert list(metrics["baselines"]) == baselines
    if kriging == "log":
        assert_figures(metrics["kriging"]["unkriged"], sklearn_figures(table["observed"], table["unkriged"]))
    for name in baselines:  # the training mean is constant: no Pearson correlation to recompute
        assert_figures(metrics["baselines"][name], sklearn_figures(table["observed"], table[name]),
                       skip=("r2_pearson",) if name == "training_mean" else ())
    assert_figures(metrics["ceiling"]["truth"], sklearn_figures(table["observed"], table["truth"]))
    world = pd.read_parquet(tiny_world / "truth.parquet").set_index("row_id")  # carried by sample, row by row
    assert np.array_equal(table["truth"], world.loc[table["row_id"], "truth"])
    assert metrics["ceiling"]["oracle_r2_full"] == json.loads((tiny_world / "oracle.json").read_text())["r2_full"]
    runs = 3 * 3 if mode == "kfold" else 3  # kfold: 3 runs for each of 3 test folds
    assert set(metrics["runs"]) == {f"run_{k}" for k in range(runs)}
    assert metrics["picp"] == pytest.approx(table["observed"].between(table["lower"], table["upper"]).mean())
    assert all(leaf in params.evaluate.rf_min_samples_leaf
               for leaf in metrics["baselines"]["rf_features"]["min_samples_leaf"])
    calibration = json.loads((tmp_path / "data/evaluate/calibration.json").read_text())
    assert calibration["n"] > 20 and calibration["spread_weight"] == 1.0
    assert sorted(os.listdir(tmp_path / "metrics/evaluate")) == ["metrics.json"]
    fields = load_fields(tmp_path / "data/evaluate/kriging.npz")  # one per run, shared by a test group's runs
    assert len(fields) == (runs if kriging == "log" else 0)
    assert len({id(field) for field in fields}) == (0 if kriging == "none" else 3 if mode == "kfold" else 1)
    # where the map can be trusted: each test row's DI against the training rows of the model(s) predicting it
    assert metrics["aoa_threshold"] == metrics["applicability"]["threshold"] > 0
    assert metrics["aoa_test_inside"] == pytest.approx((table["dissimilarity"] <= metrics["aoa_threshold"]).mean())
    assert (table["inside_aoa"] == (table["dissimilarity"] <= metrics["aoa_threshold"])).all()
    assert (table["distance_km"] > 0).all()  # test rows are never training rows
    profile = pd.read_csv(tmp_path / "plots/evaluate/error_by_dissimilarity.csv")
    assert profile["n"].sum() == len(table) and profile["dissimilarity"].is_monotonic_increasing
    assert pd.read_csv(tmp_path / "plots/evaluate/error_by_distance.csv")["n"].sum() == len(table)
    correlation = json.loads((tmp_path / "data/evaluate/error_correlation.json").read_text())
    assert len(correlation["places"]["variograms"]) == (0 if kriging == "log" else runs)  # without kriging, the runs'
    assert (tmp_path / "data/evaluate/applicability.npz").is_file()
