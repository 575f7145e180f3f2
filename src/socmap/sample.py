"""`socmap sample`: survey rows and yearly rasters into model-ready patches, with an account of every row.

Writes data/processed/patches.npy (float32 [N, C, W, W, T]), samples.parquet
(one row per patch, same order; x, y in metres of the working CRS, `socmap.ground`),
truth.parquet (a simulated world's truth of those rows, `socmap.truth`),
prediction_points.parquet (map pixels in the same CRS: where the map predicts, for the split's
distance matching) and report.json (rows read, kept, dropped by reason, fills, the analysis grid,
warped rasters, the working CRS, the oracle figures).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from socmap import paths
from socmap.config import DataConfig, SampleConfig
from socmap.ground import describe, to_working, working_crs
from socmap.io import atomic_path, write_json
from socmap.patches import channel_names, extract_patches, fill_values, window_years
from socmap.points import clean, read_survey
from socmap.rasters import RasterCatalog
from socmap.region import Region
from socmap.truth import carry_truth

log = logging.getLogger(__name__)

CHUNK_ROWS = 4096  # rows copied at a time when sparse rows are dropped from patches.npy
PREDICTION_POINTS = 20_000  # map pixels, on a regular stride, that stand for where the map predicts
SAMPLE_COLUMNS = ["row_id", "site_id", "source_id", "x", "y", "lon", "lat", "year", "target", "valid_fraction"]


def keep_rows(patches: np.ndarray, rows: np.ndarray, path: Path) -> None:
    """Rewrite the .npy memmap `patches` at `path` with only `rows`, chunk by chunk."""
    kept = np.lib.format.open_memmap(path.with_suffix(".kept.npy"), mode="w+", dtype=patches.dtype,
                                     shape=(rows.size,) + patches.shape[1:])
    for start in range(0, rows.size, CHUNK_ROWS):
        chunk = rows[start:start + CHUNK_ROWS]
        kept[start:start + chunk.size] = patches[chunk]
    kept.flush()
    del kept
    os.replace(path.with_suffix(".kept.npy"), path)


def pixel_fills(invalid: np.ndarray, years: np.ndarray, bands: list[str], static: list[bool]) -> dict:
    """Filled pixels of [N, C, T] counts by band and calendar year (static bands once per row)."""
    out = {}
    for c, band in enumerate(bands):
        if static[c]:
            out[band] = {"static": int(invalid[:, c, -1].sum())}
            continue
        counts = pd.Series(invalid[:, c].ravel()).groupby(years.ravel()).sum()
        out[band] = {str(int(y)): int(v) for y, v in counts.items() if v}
    return out


def prediction_points(catalog: RasterCatalog, region: Region, working, points: int = PREDICTION_POINTS
                      ) -> pd.DataFrame:
    """x, y (the `working` CRS, as the sample table's) of the pixel centres inside the region, every
    `stride`-th row and column so that at most about `points` remain: where the map predicts, for the
    split's distance matching."""
    grid = catalog.grid
    inside = region.mask(grid, 0, 0, grid.height, grid.width)
    stride = max(1, int(np.ceil(np.sqrt(inside.sum() / points))))
    x, y = grid.centres(0, 0, grid.height, grid.width)
    keep = inside[::stride, ::stride]
    x, y = to_working(x[::stride, ::stride][keep], y[::stride, ::stride][keep], grid.crs, working)
    return pd.DataFrame({"x": x, "y": y})


def sample(data_cfg: DataConfig, sample_cfg: SampleConfig, out_dir: str | Path = paths.PROCESSED) -> dict:
    """Run the stage: read, clean, extract, fill, drop sparse rows, write the outputs; return the report."""
    started = time.perf_counter()
    catalog = RasterCatalog.open(data_cfg)
    region = Region.from_config(data_cfg.region)
    survey = read_survey(data_cfg.points)
    rows_read = len(survey.frame)
    kept, drops, early_filled = clean(survey, data_cfg, sample_cfg.time_before, sample_cfg.early_years,
                                      catalog.grid, region)
    log.info("%d of %d rows pass the table checks; extracting %d×%d×%d patches", len(kept), rows_read,
             sample_cfg.window_size, sample_cfg.window_size, sample_cfg.time_before)
    years = window_years(kept["year"].to_numpy(), sample_cfg.time_before, data_cfg.first_year)
    bands = list(data_cfg.bands)
    static = [b in data_cfg.static_bands for b in bands]
    out_dir = Path(out_dir)
    with atomic_path(out_dir / paths.PATCHES.name) as tmp:
        # Patches go straight into the memmap of the output file: no second copy in memory.
        patches = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(
            len(kept), len(channel_names(bands, sample_cfg.context)), sample_cfg.window_size, sample_cfg.window_size,
            sample_cfg.time_before))
        _, invalid = extract_patches(catalog, kept["row"].to_numpy(), kept["col"].to_numpy(),
                                     kept["year"].to_numpy(), sample_cfg.window_size, sample_cfg.time_before,
                                     fill=sample_cfg.fill, out=patches, context=sample_cfg.context)
        pixels = len(bands) * sample_cfg.window_size ** 2 * sample_cfg.time_before  # per patch
        valid_fraction = 1.0 - invalid.sum(axis=(1, 2)) / pixels
        enough = valid_fraction >= sample_cfg.min_valid_fraction
        patches.flush()
        if not enough.all():
            keep_rows(patches, np.flatnonzero(enough), tmp)
        del patches
    drops["low_valid_fraction"] = int(np.sum(~enough))
    fills = fill_values(catalog, sample_cfg.fill)
    working = working_crs(catalog.grid.crs, region)
    x, y = to_working(kept["x"].to_numpy(), kept["y"].to_numpy(), catalog.grid.crs, working)
    samples = kept.assign(x=x, y=y, valid_fraction=valid_fraction)[enough][SAMPLE_COLUMNS].reset_index(drop=True)
    with atomic_path(out_dir / paths.SAMPLES.name) as tmp:
        samples.to_parquet(tmp, index=False)
    truth = carry_truth(data_cfg.points.path, samples, out_dir / paths.TRUTH.name)
    with atomic_path(out_dir / paths.PREDICTION_POINTS.name) as tmp:
        prediction_points(catalog, region, working).to_parquet(tmp, index=False)

    report = {
        "rows_read": rows_read,
        "rows_kept": len(samples),
        "drops": drops,
        "fills": {
            "fill": sample_cfg.fill,
            "missing_band_years": catalog.describe()["missing_band_years"],
            "missing_years_from": data_cfg.rasters.missing_years,
            "early_years_rows": int(early_filled if sample_cfg.early_years == "fill" else 0),
            "pixels": pixel_fills(invalid[enough], years[enough], bands, static),
            "pixel_share": float(1.0 - valid_fraction[enough].mean()) if enough.any() else 0.0,
        },
        **{k: v for k, v in catalog.describe().items() if k in ("grid", "warped", "shifted")},
        "working_crs": describe(working, region, catalog.grid.crs),
        "bands": bands,
        "channels": channel_names(bands, sample_cfg.context),
        "static_bands": list(data_cfg.static_bands),
        "window_size": sample_cfg.window_size,
        "time_before": sample_cfg.time_before,
        "fill_values": {b: float(v) for b, v in fills.items()},
        "points": {"path": survey.path, "crs": survey.crs.to_string(), "unit": data_cfg.points.unit},
        "target": _summary(samples["target"].to_numpy()),
        "sites": int(samples["site_id"].nunique()),
        "truth": truth,
    }
    assert report["rows_read"] == report["rows_kept"] + sum(drops.values()), "every row is accounted for"
    write_json(out_dir / paths.REPORT.name, report)
    log.info("kept %d of %d rows (%s) in %.1f s", len(samples), rows_read,
             ", ".join(f"{k} {v}" for k, v in drops.items() if v) or "none dropped",
             time.perf_counter() - started)
    return report


def _summary(target: np.ndarray) -> dict:
    """Target percentiles (g/kg) of the kept rows."""
    if target.size == 0:
        return {}
    p = np.percentile(target, [5, 25, 50, 75, 95])
    return {"mean": float(target.mean()), **{f"p{q}": float(v) for q, v in zip((5, 25, 50, 75, 95), p)}}


def main(params) -> None:
    """`socmap sample`: data.* and sample.* into data/processed/."""
    sample(params.data, params.sample, paths.PROCESSED)
