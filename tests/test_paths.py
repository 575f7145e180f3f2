"""The artifact paths: declared in dvc.yaml by the stage that writes them and the stages that read them,
and spelt in socmap.paths alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from socmap import paths

from conftest import ROOT

# stage -> (paths it writes, paths it reads), each in socmap.paths
CONTRACT = {
    "sample": ([paths.PATCHES, paths.SAMPLES, paths.TRUTH, paths.REPORT], [paths.REGION]),
    "split": ([paths.SPLIT, paths.SPLIT_METRICS], [paths.SAMPLES]),
    "train": ([paths.MODELS, paths.TRAIN_CURVES, paths.TRAIN_METRICS / "metrics.json", paths.TRAIN_METRICS / "plots"],
              [paths.PATCHES, paths.SAMPLES, paths.SPLIT]),
    "baselines": ([paths.BASELINES], [paths.PATCHES, paths.SAMPLES, paths.SPLIT]),
    "evaluate": ([paths.CALIBRATION, paths.KRIGING_FIELDS, paths.APPLICABILITY, paths.ERROR_CORRELATION,
                  paths.EVALUATE_PLOTS, paths.EVALUATE_METRICS / "metrics.json"],
                 [paths.PATCHES, paths.SAMPLES, paths.TRUTH, paths.REPORT, paths.SPLIT, paths.BASELINES, paths.MODELS,
                  paths.REGION]),
    "bundle": ([paths.ENSEMBLE], [paths.MODELS, *paths.MAP_INPUTS]),
    "map": ([paths.MAPS, paths.POLYGON_MEANS, paths.MAP_PLOTS, paths.MAP_METRICS],
            [paths.MODELS, paths.CALIBRATION, paths.KRIGING_FIELDS, paths.APPLICABILITY, paths.ERROR_CORRELATION,
             paths.REGION]),
}


def declared(stage: dict, *kinds: str) -> set[str]:
    """The paths of a dvc.yaml stage's entries of `kinds` (outs, deps, metrics, plots)."""
    found = set()
    for kind in kinds:
        for entry in stage.get(kind, []):
            found.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return found


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_each_stage_declares_what_it_writes_and_reads(name):
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    writes, reads = CONTRACT[name]
    assert {str(p) for p in writes} <= declared(stage, "outs", "metrics", "plots")
    assert {str(p) for p in reads} <= declared(stage, "deps")


def test_what_watches_or_resumes_a_training_is_no_output_and_stays_out_of_git():
    """resume/train/ and monitor/train/ are no DVC output (an output kept between runs turns the run-cache
    off), and .gitignore keeps them out of git; the truth reaches evaluate, never train."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for path in (paths.RESUME, paths.TRAIN_MONITOR):
        assert all(not str(path).startswith(out) and not out.startswith(str(path))
                   for stage in stages.values() for out in declared(stage.get("do", stage), "outs")), path
        assert f"/{path.parts[0]}/" in (ROOT / ".gitignore").read_text().splitlines()
    assert all("persist" not in str(stage) for stage in stages.values())
    assert str(paths.TRUTH) not in declared(stages["train"], "deps")


def test_the_simulated_world_is_where_the_default_params_read_it():
    simulate = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["simulate"]["do"]
    assert str(paths.world_data("${key}")) in declared(simulate, "outs")
    assert str(paths.world_plots("${key}")) in declared(simulate, "outs")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]
    assert params["rasters"]["dir"] == str(paths.world_data() / paths.WORLD_RASTERS)
    assert params["points"]["path"] == str(paths.world_data() / paths.WORLD_POINTS)


def string_literals(path: Path) -> list[str]:
    """The string constants of a module, its docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_module_but_socmap_paths_spells_an_artifact_path():
    artifact = {str(p) for p in vars(paths).values() if isinstance(p, Path)}
    artifact |= {paths.WORLD_TRUTH, paths.WORLD_ORACLE, paths.WORLD_POINTS}
    spelt = {}
    for module in sorted((ROOT / "src/socmap").glob("*.py")):
        if module.name != "paths.py":
            for text in string_literals(module):
                if text in artifact or text.startswith(("data/", "models/", "metrics/", "plots/", "resume/")):
                    spelt.setdefault(module.name, []).append(text)
    assert spelt == {}
