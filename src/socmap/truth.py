"""A simulated world's noise-free truth, carried by the sample stage to the evaluate stage for the kept rows.

simulate writes truth.parquet and oracle.json beside points.csv; a truth.parquet in the folder of
`data.points.path` is what marks a simulated world. The sample stage copies the truth of the rows it
keeps into data/processed/truth.parquet (no rows for real data) and the oracle figures into its
report, so that evaluate reads declared inputs only. The truth never reaches a model: samples.parquet
has no truth column and the train stage does not read the file.

sample reads the world's files beside the points file, one of its deps: simulate writes them
together in one run, so a changed truth comes with a changed points file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from socmap import paths
from socmap.errors import SocmapError
from socmap.io import atomic_path

COLUMNS = ["row_id", "year", "truth", "truth_covariates"]


@dataclass(frozen=True)
class Truth:
    """A simulated world's noise-free truth per sample row (columns truth, truth_covariates, in sample
    order) and its oracle figures (oracle.json; None when absent)."""

    table: pd.DataFrame
    oracle: dict | None


def carry_truth(points_path: str | Path, samples: pd.DataFrame, out: str | Path = paths.TRUTH) -> dict:
    """Write the truth of the `samples` rows (in their order) to `out`, from the world beside
    `points_path`, or a table without rows for real data; return the report's account of it."""
    world = Path(points_path).parent
    source = world / paths.WORLD_TRUTH
    simulated = source.exists()
    if simulated:
        truth = pd.read_parquet(source, columns=COLUMNS).set_index("row_id")
        missing = np.setdiff1d(samples["row_id"], truth.index)
        if missing.size:
            raise SocmapError(f"{source}: no row_id {missing[0]} of {points_path}; the truth belongs to "
                              f"another world: rerun `socmap simulate` and the stages after it")
        truth = truth.loc[samples["row_id"]].reset_index()
        if not np.array_equal(truth["year"].to_numpy(), samples["year"].to_numpy()):
            raise SocmapError(f"{source}: years differ from {points_path} for the same row_id; "
                              f"rerun the stages after `socmap simulate`")
        oracle_path = world / paths.WORLD_ORACLE
        oracle = json.loads(oracle_path.read_text()) if oracle_path.exists() else None
    else:
        truth = pd.DataFrame({"row_id": np.empty(0, np.int64), "year": np.empty(0, np.int64),
                              "truth": np.empty(0), "truth_covariates": np.empty(0)})
        oracle = None
    with atomic_path(out) as tmp:
        truth.to_parquet(tmp, index=False)
    return {"source": str(source) if simulated else None, "rows": len(truth),
            "oracle": None if oracle is None else {k: oracle[k] for k in ("r2_full", "r2_covariates")}}


def load_truth(samples: pd.DataFrame, report: dict, path: str | Path = paths.TRUTH) -> Truth | None:
    """The truth of the sample rows, as the sample stage wrote it; None for real data (no rows)."""
    if not Path(path).is_file():
        raise SocmapError(f"{path}: not found; run `socmap sample` first")
    truth = pd.read_parquet(path)
    if truth.empty:
        return None
    if not np.array_equal(truth["row_id"].to_numpy(), samples["row_id"].to_numpy()):
        raise SocmapError(f"{path}: rows differ from {paths.SAMPLES}; rerun `socmap sample`")
    return Truth(truth, (report.get("truth") or {}).get("oracle"))
