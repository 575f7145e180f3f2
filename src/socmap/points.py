"""Survey points: read any common table or vector file, map its columns, convert units, clean it.

Every input row ends up either kept or dropped for exactly one reason (the
first in `REASONS` that applies), so that the counts add up to the rows read.
A row's `row_id` is its 0-based position in the file; its `site_id` is shared
with every row that has the same id or the same coordinates (LUCAS revisits a
point under one id; state surveys revisit coordinates under new ids).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyogrio.raw
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from socmap.config import DataConfig, PointsConfig
from socmap.errors import SocmapError
from socmap.grid import GridSpec
from socmap.region import Region

log = logging.getLogger(__name__)

TABLES = {".csv", ".txt", ".tsv", ".parquet", ".xlsx", ".xls"}
VECTORS = {".shp", ".gpkg", ".geojson", ".json", ".fgb", ".gml", ".kml", ".sqlite"}
REASONS = (
    "missing_coordinates", "non_numeric_coordinates", "missing_target", "non_numeric_target",
    "target_not_positive", "above_max_target", "missing_year", "outside_region", "year_out_of_range",
    "early_years", "duplicate",
)
UNIT_TO_G_PER_KG = {"g/kg": 1.0, "%": 10.0}


@dataclass
class Survey:
    """The rows of a survey file in a common form, one row per input row, in file order.

    `frame` columns: row_id, site_id, source_id, x_in, y_in (input CRS), target (g/kg), year
    (float, NaN where unknown), reason (the parse failure, or "").
    """

    frame: pd.DataFrame
    crs: CRS
    path: str


# ------------------------------------------------------------------------------ reading


def read_table(path: str | Path, layer: Optional[str] = None) -> tuple[pd.DataFrame, Optional[str],
                                                                        Optional[np.ndarray]]:
    """A survey file as (attribute table, CRS of its geometry or None, geometry WKB or None)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise SocmapError(f"data.points.path = {str(path)!r}: file not found")
    if suffix not in TABLES | VECTORS:
        raise SocmapError(f"data.points.path = {str(path)!r}: unknown file type {suffix!r}; use one of "
                          f"{', '.join(sorted(TABLES | VECTORS))}")
    try:
        if suffix in (".csv", ".txt", ".tsv"):
            return _read_csv(path), None, None
        if suffix == ".parquet":
            return pd.read_parquet(path), None, None
        if suffix in (".xlsx", ".xls"):
            return pd.read_excel(path, sheet_name=layer if layer is not None else 0), None, None
        meta, _, wkb, fields = pyogrio.raw.read(path, layer=layer)
    except SocmapError:
        raise
    except Exception as exc:  # the readers raise many types for a broken file
        raise SocmapError(f"data.points.path = {str(path)!r}: cannot read the file: {exc}") from None
    frame = pd.DataFrame({name: values for name, values in zip(meta["fields"], fields)})
    return frame, meta.get("crs"), wkb


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV read as text (so that a bad number is told apart from an empty cell), its separator sniffed."""
    for encoding in ("utf-8-sig", "latin-1"):  # German tables often come in Latin-1
        try:
            with open(path, newline="", encoding=encoding) as handle:
                head = handle.read(64 * 1024)
            try:
                sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
            except csv.Error:
                sep = ","
            return pd.read_csv(path, sep=sep, dtype=str, encoding=encoding)
        except UnicodeDecodeError:
            continue
    raise SocmapError(f"data.points.path = {str(path)!r}: neither UTF-8 nor Latin-1 text")


def read_survey(cfg: PointsConfig) -> Survey:
    """Read `data.points.path` and map its columns; raise `SocmapError` for a missing column or CRS."""
    table, file_crs, wkb = read_table(cfg.path, cfg.layer)
    name = Path(cfg.path).name
    cols = cfg.columns
    present = ", ".join(map(str, table.columns))

    def require(key: str, column: Optional[str]) -> None:
        if column is not None and column not in table.columns:
            hint = " (or null to number the rows)" if key == "id" else ""
            raise SocmapError(f"data.points.columns.{key} = {column!r}: no such column in {name}{hint}; "
                              f"columns present: {present}")

    require("target", cols.target)
    require("id", cols.id)
    require("date", cols.date)
    n = len(table)
    reason = np.full(n, "", dtype=object)

    geometry = shapely.from_wkb(wkb) if wkb is not None else None
    if geometry is not None and any(g is not None for g in geometry):
        # The geometry carries the coordinates and its own CRS; x/y columns are not needed.
        if not all(g is None or g.geom_type == "Point" for g in geometry):
            log.warning("%s: non-point geometries; their centroids are used", name)
            geometry = np.array([None if g is None else g.centroid for g in geometry], dtype=object)
        empty = np.array([g is None or g.is_empty for g in geometry])
        x_in = np.where(empty, np.nan, shapely.get_x(np.where(empty, None, geometry)))
        y_in = np.where(empty, np.nan, shapely.get_y(np.where(empty, None, geometry)))
        reason[empty] = "missing_coordinates"
        crs_text, crs_key = (file_crs, f"the CRS of {name}") if file_crs else (cfg.crs, "data.points.crs")
        table = table.assign(__x=x_in, __y=y_in)  # exact duplicates compare the location too
    else:
        require("x", cols.x)
        require("y", cols.y)
        x_in, x_missing, x_bad = _numbers(table[cols.x])
        y_in, y_missing, y_bad = _numbers(table[cols.y])
        reason[(x_bad | y_bad)] = "non_numeric_coordinates"
        reason[(x_missing | y_missing)] = "missing_coordinates"
        crs_text, crs_key = cfg.crs, "data.points.crs"
    try:
        crs = CRS.from_user_input(crs_text)
    except CRSError as exc:
        raise SocmapError(f"{crs_key} = {crs_text!r}: unknown CRS ({exc}); give e.g. EPSG:4326") from None

    target, t_missing, t_bad = _numbers(table[cols.target])
    target = target * UNIT_TO_G_PER_KG[cfg.unit]
    _first_reason(reason, t_missing, "missing_target")
    _first_reason(reason, t_bad, "non_numeric_target")
    year = _years(table, cfg, name, present)

    if cols.id is None:
        source_id = np.arange(n).astype(str)
    else:
        source_id = np.array([_id_text(v) for v in table[cols.id]], dtype=object)
    frame = pd.DataFrame({
        "row_id": np.arange(n, dtype=np.int64),
        "site_id": site_ids(source_id, x_in, y_in),
        "source_id": source_id.astype(str),
        "x_in": x_in, "y_in": y_in, "target": target, "year": year, "reason": reason,
        "duplicate": table.duplicated(keep="first").to_numpy(),
    })
    return Survey(frame, crs, str(cfg.path))


def _numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float values, missing mask, non-numeric mask); text with a decimal comma counts as a number."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=float, na_value=np.nan)
        missing = np.isnan(values)
        bad = np.isinf(values)
    else:
        text = column.astype("string").str.strip()
        missing = (text.isna() | (text == "")).to_numpy(dtype=bool)
        values = pd.to_numeric(text.str.replace(",", ".", regex=False).where(~missing),
                               errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        bad = (np.isnan(values) | np.isinf(values)) & ~missing
    return np.where(bad, np.nan, values), missing, bad


def _years(table: pd.DataFrame, cfg: PointsConfig, name: str, present: str) -> np.ndarray:
    """Survey year per row: the year column, else the year of the date column, else data.points.year."""
    cols = cfg.columns
    year = np.full(len(table), np.nan)
    if cols.year is not None:
        if cols.year in table.columns:
            values, _, _ = _numbers(table[cols.year])
            year = np.where(values == np.round(values), values, np.nan)
        elif cols.date is None and cfg.year is None:
            raise SocmapError(f"data.points.columns.year = {cols.year!r}: no such column in {name}; columns "
                              f"present: {present} (or set data.points.columns.date or data.points.year)")
        else:
            log.info("%s: no column %r; the survey year comes from %s", name, cols.year,
                     f"column {cols.date!r}" if cols.date else f"data.points.year = {cfg.year}")
    if cols.date is not None:
        # Only the year is used, so a day-first or month-first date gives the same answer.
        dates = pd.to_datetime(table[cols.date], errors="coerce", format="mixed", dayfirst=True)
        year = np.where(np.isnan(year), dates.dt.year.to_numpy(dtype=float, na_value=np.nan), year)
    if cfg.year is not None:
        year = np.where(np.isnan(year), float(cfg.year), year)
    return year


def _id_text(value) -> str:
    """A table id as text: 12345 rather than 12345.0; "" where missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _first_reason(reason: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Give `name` to the rows in `mask` that have no reason yet."""
    reason[mask & (reason == "")] = name


def site_ids(source_id: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """int64 site per row: rows linked by the same id or the same coordinates, chained, share one.

    Sites are numbered by their first row, so a given file always gets the same numbers.
    """
    n = len(source_id)
    ids = pd.Series(source_id, dtype=object).replace("", None)
    id_group = pd.factorize(ids)[0]  # -1: no id
    coords = pd.Series(list(zip(x, y)))
    has_xy = ~(np.isnan(x) | np.isnan(y))
    xy_group = np.where(has_xy, pd.factorize(coords.where(has_xy, None))[0], -1)
    # A graph of rows, id nodes and coordinate nodes; its connected components are the sites.
    n_id = id_group.max() + 1
    edges = [(np.flatnonzero(id_group >= 0), n + id_group[id_group >= 0]),
             (np.flatnonzero(xy_group >= 0), n + n_id + xy_group[xy_group >= 0])]
    src = np.concatenate([e[0] for e in edges])
    dst = np.concatenate([e[1] for e in edges])
    size = n + n_id + xy_group.max() + 1
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(size, size))
    _, labels = connected_components(graph, directed=False)
    return pd.factorize(labels[:n])[0].astype(np.int64)


# ------------------------------------------------------------------------------ cleaning


def clean(survey: Survey, data_cfg: DataConfig, time_before: int, early_years: str, grid: GridSpec,
          region: Region) -> tuple[pd.DataFrame, dict[str, int], int]:
    """Locate every row on the grid and drop what cannot be used, each row for its first reason.

    Returns:
        (kept rows with x, y in the grid CRS, lon, lat, grid row and col; drops by reason;
        number of kept rows whose window starts before data.first_year and repeats it).
    """
    f = survey.frame
    reason = f["reason"].to_numpy(dtype=object).copy()
    x, y = Transformer.from_crs(survey.crs, grid.crs, always_xy=True).transform(
        f["x_in"].to_numpy(), f["y_in"].to_numpy(), errcheck=False)
    lon, lat = Transformer.from_crs(survey.crs, "EPSG:4326", always_xy=True).transform(
        f["x_in"].to_numpy(), f["y_in"].to_numpy(), errcheck=False)
    x, y, lon, lat = (np.asarray(v, dtype=float) for v in (x, y, lon, lat))
    row, col = grid.index(x, y)
    target = f["target"].to_numpy()
    year = f["year"].to_numpy()
    with np.errstate(invalid="ignore"):
        _first_reason(reason, target <= 0, "target_not_positive")
        _first_reason(reason, target > data_cfg.max_target, "above_max_target")
        _first_reason(reason, np.isnan(year), "missing_year")
        inside = region.contains_lonlat(lon, lat) & grid.contains_index(row, col) & np.isfinite(x) & np.isfinite(y)
        _first_reason(reason, ~inside, "outside_region")
        _first_reason(reason, (year < data_cfg.first_year) | (year > data_cfg.last_year), "year_out_of_range")
        early = year - time_before + 1 < data_cfg.first_year
    if early_years == "drop":
        _first_reason(reason, early, "early_years")
    _first_reason(reason, f["duplicate"].to_numpy(), "duplicate")
    keep = reason == ""
    drops = {name: int(np.sum(reason == name)) for name in REASONS}
    kept = pd.DataFrame({
        "row_id": f["row_id"], "site_id": f["site_id"], "source_id": f["source_id"], "x": x, "y": y,
        "lon": lon, "lat": lat, "year": year, "target": target, "row": row, "col": col,
    })[keep].reset_index(drop=True)
    kept["year"] = kept["year"].astype(np.int64)
    return kept, drops, int(np.sum(early & keep))
