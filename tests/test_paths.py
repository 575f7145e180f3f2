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
    "sample": ([paths.PATCHES, paths.SAMPLES, paths.REPORT], [paths.REGION]),
    "split": ([paths.SPLIT, paths.SPLIT_METRICS], [paths.SAMPLES]),
    "train": ([paths.MODELS, paths.RESUME, paths.TRAIN_METRICS / "metrics.json", paths.TRAIN_METRICS / "plots"],
              [paths.PATCHES, paths.SAMPLES, paths.SPLIT]),
    "evaluate": ([paths.CALIBRATION, paths.KRIGING_FIELDS, paths.EVALUATE_PLOTS,
                  paths.EVALUATE_METRICS / "metrics.json"],
                 [paths.PATCHES, paths.SAMPLES, paths.REPORT, paths.SPLIT, paths.MODELS, paths.REGION]),
    "map": ([paths.MAPS, paths.MAP_PLOTS], [paths.MODELS, paths.CALIBRATION, paths.KRIGING_FIELDS, paths.REGION]),
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


def test_the_simulated_world_is_where_the_default_params_read_it():
    simulate = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["simulate"]["do"]
    assert str(paths.world_data("${key}")) in declared(simulate, "outs")
    assert str(paths.world_plots("${key}")) in declared(simulate, "outs")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]
    assert params["rasters"]["dir"] == str(paths.world_data() / paths.WORLD_RASTERS)
    assert params["points"]["path"] == str(paths.world_data() / paths.WORLD_POINTS)


def string_literals(path: Path) -> list[str]:
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


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
