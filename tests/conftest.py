"""Shared fixtures: the real params, shrunk to a tiny simulated world written in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

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
        "train.epochs": 3,
        "train.num_runs": 2,
        "train.batch_size": 64,
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


@pytest.fixture
def tiny(tiny_world) -> Params:
    """Params for the tiny world."""
    return tiny_params(tiny_world)
