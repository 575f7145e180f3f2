"""Shared fixtures: the real params, shrunk to a tiny simulated world written in about a second; a small
learnable data set and a training on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from socmap.config import Params, load_params, replace
from socmap.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]

# A ~25 km square of Bavaria north of Munich, 2012-2020: a few hundred rows, every quirk of the real data.
TINY_WORLD = {
    "simulate.bbox": [11.30, 48.20, 11.64, 48.43],
    "simulate.first_year": 2012,
    "simulate.last_year": 2020,
    "simulate.sites": 220,
    "simulate.lucas_years": [2015, 2018],
    "simulate.dirty_share": 0.08,
    "simulate.nodata_share": 0.01,
}


def tiny_params(world: Path, **overrides) -> Params:
    """The repository's params.yaml pointed at a tiny world under `world`, with `overrides` applied."""
    params = replace(load_params(ROOT / "params.yaml"), **TINY_WORLD)
    data = {
        "data.rasters.dir": str(world / "rasters"),
        "data.points.path": str(world / "points.csv"),
        "data.region.bbox": TINY_WORLD["simulate.bbox"],
        "data.first_year": 2012,
        "data.last_year": 2020,
        "sample.time_before": 3,
        "map.years": [2020],
        "map.polygons": str(world / "districts.geojson"),
        "train.epochs": 3,
        "train.num_runs": 2,
        "train.batch_size": 64,
        "train.parallel_runs": 1,  # worker processes take seconds to start: more than these runs take
        "evaluate.bootstrap": 50,
        "evaluate.rf_trees": 20,
    }
    return replace(params, **{**data, **overrides})


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A tiny simulated world, written once per test session (read-only for tests)."""
    world = tmp_path_factory.mktemp("tiny") / "synthetic"
    simulate(tiny_params(world).simulate, world)
    return world


@pytest.fixture(scope="session")
def knob_world(tmp_path_factory):
    """knob_world(**simulate_keys): the tiny world with those keys set, written once per session."""
    root, worlds = tmp_path_factory.mktemp("knobs"), {}

    def make(**knobs) -> Path:
        key = tuple(sorted(knobs.items()))
        if key not in worlds:
            worlds[key] = root / f"world{len(worlds)}"
            simulate(tiny_params(worlds[key], **{f"simulate.{k}": v for k, v in knobs.items()}).simulate, worlds[key])
        return worlds[key]

    return make


@pytest.fixture
def tiny(tiny_world) -> Params:
    """Params for the tiny world."""
    return tiny_params(tiny_world)


@pytest.fixture
def one_thread():
    """As `socmap train` runs by default (train.threads: 1): fast and steady on a busy machine too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """A folder with the learnable data set of `learnable.write_inputs` (read-only for tests)."""
    from learnable import write_inputs

    root = tmp_path_factory.mktemp("project")
    write_inputs(root)
    return root


@pytest.fixture(scope="session")
def trained(project, tmp_path_factory):
    """That data set trained once with the fast params: (output root, summary, every epoch's record)."""
    from learnable import params_for, run_train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("trained")
    records = []
    summary = run_train(project, out, params_for(project), callback=lambda run, r: records.append((run, r)))
    torch.set_num_threads(threads)
    return out, summary, records


@pytest.fixture(scope="session")
def mapped(tiny_world, tmp_path_factory) -> tuple[Path, Params]:
    """A project directory after sample → split → train (1 epoch) → evaluate → map on the tiny world."""
    import contextlib
    import importlib

    from mapped import MAP

    root = tmp_path_factory.mktemp("map-project")
    params = tiny_params(tiny_world, **MAP)
    with contextlib.chdir(root):
        for stage in ("sample", "split", "train", "baselines", "evaluate", "mapping"):
            importlib.import_module(f"socmap.{stage}").main(params)
    return root, params


@pytest.fixture(scope="session")
def ensemble(mapped) -> list:
    """The mapped project's checkpoints, as `Predictor`s."""
    from socmap.predict import load_ensemble

    return load_ensemble(mapped[0] / "models")


@pytest.fixture(scope="session")
def calibration(mapped) -> dict:
    """The mapped project's interval calibration."""
    from socmap.io import read_json

    return read_json(mapped[0] / "data/evaluate/calibration.json", "evaluate")


@pytest.fixture(scope="session")
def fields(mapped) -> list:
    """The mapped project's kriging fields, one per run."""
    from socmap.kriging import load_fields

    return load_fields(mapped[0] / "data/evaluate/kriging.npz")


@pytest.fixture
def coded(tmp_path) -> Path:
    """The coded world of `coded.write_coded` under a fresh folder."""
    from coded import write_coded

    return write_coded(tmp_path)
