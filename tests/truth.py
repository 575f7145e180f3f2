"""The noise-free truth of a simulated world over every pixel of a year (truth.parquet has it at the survey rows
only), from the simulation's own functions and draws."""

from __future__ import annotations

import numpy as np

from socmap.config import SimulateConfig
from socmap.grid import GridSpec
from socmap.simulate import build_world, covariate_log_soc, residual_field, survey_sites


def pixel_truth(cfg: SimulateConfig, year: int) -> tuple[GridSpec, np.ndarray]:
    """The yearly grid and the expected SOC (g/kg) [height, width] of every pixel in `year`."""
    world = build_world(cfg)
    survey_sites(cfg, world.coarse, world.rng)  # the draws simulate makes before the residual field's
    residual = residual_field(world)
    rows, cols = np.indices(world.elev.shape)
    t = np.full(rows.size, year - world.years[0])
    log_soc = covariate_log_soc(world, rows.ravel(), cols.ravel(), t, cfg).reshape(rows.shape) + residual
    return world.coarse, np.exp(log_soc)
