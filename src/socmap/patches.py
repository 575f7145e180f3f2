"""Patches around survey rows: read each raster once, index every row at once, fill what is missing.

`fill_values` says what value a band's missing pixels get (sample.fill) and
`fill_missing` is the one place where NaN pixels get it: the sample stage and
the map stage both call them, so a map pixel sees exactly the patch that the
sample stage extracted for the same row and year.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from socmap.rasters import RasterCatalog

log = logging.getLogger(__name__)


def fill_value(catalog: RasterCatalog, band: str, fill: str) -> float:
    """The value of a band's nodata and beyond-edge pixels (sample.fill): the mean of all its valid grid
    pixels (mean, `RasterCatalog.fill_value`) or 0 (zero)."""
    return catalog.fill_value(band) if fill == "mean" else 0.0


def fill_values(catalog: RasterCatalog, fill: str) -> dict[str, float]:
    """`fill_value` of every band of data.bands."""
    return {band: fill_value(catalog, band, fill) for band in catalog.cfg.bands}


def fill_missing(stack: np.ndarray, fill_values: Sequence[float],
                 inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Replace NaN in a float32 [..., C, h, w, T] stack by each band's fill value.

    Returns:
        (filled float32 array of the same shape, `stack` itself if `inplace`; bool array, True where
        the pixel was valid).
    """
    valid = ~np.isnan(stack)
    fill = np.asarray(fill_values, dtype=np.float32).reshape(-1, 1, 1, 1)  # [C, 1, 1, 1]
    filled = stack if inplace else np.array(stack, dtype=np.float32)
    np.copyto(filled, fill, where=~valid)
    return filled, valid


def window_years(survey_years: np.ndarray, time_before: int, first_year: int) -> np.ndarray:
    """[N, T] calendar years of each row's window, oldest first, ending at its survey year; years
    before `first_year` repeat `first_year` (rows that must not be filled are dropped before)."""
    offsets = np.arange(-time_before + 1, 1)
    return np.maximum(np.asarray(survey_years, dtype=np.int64)[:, None] + offsets, first_year)


def extract_patches(catalog: RasterCatalog, rows: np.ndarray, cols: np.ndarray, survey_years: np.ndarray,
                    window_size: int, time_before: int, fill: Optional[str] = "mean",
                    out: Optional[np.ndarray] = None, context: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 [N, C, W, W, T] windows centred on grid pixels (rows, cols) over the `window_years`
    of each survey year, and how many of their pixels were nodata or off the grid.

    Each band is read once over the whole grid and all years, filled there with `fill_missing` (so
    the patches need no second pass), and every row is gathered from it by fancy indexing a
    padded [H, W, year] view whose windows are the patches themselves. With `context` (sample.context),
    every band's mean over `context`² pixels around each pixel (`box_mean`) follows the bands as one
    more channel each (`channel_names`): C is twice the bands.

    Args:
        rows, cols: [N] grid pixel of each row (on the grid).
        survey_years: [N] in data.first_year..data.last_year.
        fill: sample.fill (`fill_value`, taken once the band's whole grid is read), or None to keep NaN.
        out: optional array (a memmap, say) to write into.

    Returns:
        (patches, int32 [N, bands, T] count of filled pixels per row, band and time step).
    """
    cfg = catalog.cfg
    rows, cols, survey_years = np.asarray(rows), np.asarray(cols), np.asarray(survey_years, dtype=np.int64)
    if survey_years.size and not (cfg.first_year <= survey_years.min() <= survey_years.max() <= cfg.last_year):
        raise ValueError(f"survey years must lie in {cfg.first_year}..{cfg.last_year}")
    n, steps, radius, bands = len(rows), time_before, window_size // 2, len(cfg.bands)
    if out is None:
        out = np.empty((n, len(channel_names(cfg.bands, context)), window_size, window_size, steps), dtype=np.float32)
    invalid = np.zeros((n, bands, steps), dtype=np.int32)
    if n == 0:
        return out, invalid
    layer = window_years(survey_years, steps, cfg.first_year) - cfg.first_year  # [N, T] into cfg.years
    for c, band in enumerate(tqdm(cfg.bands, desc="bands", unit="band", disable=None, leave=False)):
        static = band in cfg.static_bands
        # The exact grid, then padded with numpy: a boundless read is slow, and an exact-grid read is
        # what the fill values are computed from.
        grid = catalog.read_years(band, cfg.years[:1] if static else cfg.years, 0, 0, catalog.grid.height,
                                  catalog.grid.width)  # [Ty, H, W]
        padded = np.pad(grid, ((0, 0), (radius, radius), (radius, radius)), constant_values=np.nan)
        counts = window_counts(np.isnan(padded), window_size)  # [Ty, H, W] NaN pixels per window
        value = [fill_value(catalog, band, fill)] if fill is not None else None
        if context:
            wide = np.pad(grid, ((0, 0),) + ((radius + context // 2,) * 2,) * 2, constant_values=np.nan)
            if value is not None:
                fill_missing(wide[None], value, inplace=True)
            gather(box_mean(wide, context), rows, cols, survey_years - cfg.first_year, window_size, steps,
                   out[:, bands + c])
        if value is not None:
            fill_missing(padded[None], value, inplace=True)  # [1, Ty, Hp, Wp]: one band
        gather(padded, rows, cols, survey_years - cfg.first_year, window_size, steps, out[:, c])
        invalid[:, c] = counts[0, rows, cols][:, None] if static else counts[layer, rows[:, None], cols[:, None]]
    return out, invalid


def gather(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, layer: np.ndarray, window_size: int,
           steps: int, out: np.ndarray) -> None:
    """Write into `out` [N, w, w, T] the windows of a band's padded [Ty, H + w − 1, W + w − 1] grid (Ty = 1:
    static, repeated over T) at grid pixels (rows, cols), ending at year layer `layer` [N]."""
    if len(padded) == 1:
        view = sliding_window_view(padded[0], (window_size, window_size))  # [H, W, w, w]
        out[...] = view[rows, cols][..., None]  # [N, w, w, 1], repeated over T
        return
    years = np.unique(layer)
    if len(rows) * window_size**2 <= len(years) * padded.shape[1] * padded.shape[2]:
        # Years last, with T-1 copies of the first year in front: the window of survey year Y is then the T
        # consecutive layers from Y - first_year, early years repeating the first.
        by_year = np.moveaxis(padded, 0, -1)  # [Hp, Wp, Ty]
        by_year = np.concatenate([np.repeat(by_year[..., :1], steps - 1, axis=-1), by_year], axis=-1)
        out[...] = sliding_window_view(by_year, (window_size, window_size, steps))[rows, cols, layer]
        return
    # Large windows: per survey year, its T years (the first repeated before it) as one contiguous
    # [Hp, Wp, T] copy, so that every row of a window is one run of memory; the copies cost less than
    # the windows they serve.
    for year in years:
        at = np.flatnonzero(layer == year)
        block = np.stack([padded[max(year + k - steps + 1, 0)] for k in range(steps)], axis=-1)
        out[at] = sliding_window_view(block, (window_size, window_size, steps))[rows[at], cols[at], 0]


def box_mean(values: np.ndarray, size: int) -> np.ndarray:
    """float32 [T, H − size + 1, W − size + 1]: the mean over every size × size window of [T, H, W] values.

    Each window's sums are taken on their own in float64 (rows, then columns), not as running sums,
    so that a pixel's mean is the same bits whatever extent it is computed over: the map's blocks
    give what the sample stage gives on the whole grid.
    """
    rows = sliding_window_view(np.asarray(values, dtype=np.float64), size, axis=1).sum(axis=-1)
    return (sliding_window_view(rows, size, axis=2).sum(axis=-1) / size**2).astype(np.float32)


def channel_names(bands: Sequence[str], context: int) -> list[str]:
    """The model's input channels: the bands, then with sample.context each band's context mean
    (``{band}~{context}``)."""
    return [*bands, *([f"{band}~{context}" for band in bands] if context else [])]


def is_static(channel: str, static_bands: Sequence[str]) -> bool:
    """Whether a channel repeats over the years: a static band, or its context mean."""
    return channel.split("~")[0] in static_bands


def window_counts(mask: np.ndarray, window_size: int) -> np.ndarray:
    """[T, H, W] number of True pixels in the window_size² window at each unpadded pixel of a padded
    [T, H + 2r, W + 2r] mask (a summed-area table, so the cost does not grow with the window)."""
    t, hp, wp = mask.shape
    # uint16 sums wrap around on large grids, but a window's count (< 65536 for windows up to 255
    # pixels) comes out exact in modular arithmetic, at half the memory traffic of int32.
    dtype = np.uint16 if window_size <= 255 else np.int64
    table = np.zeros((t, hp + 1, wp + 1), dtype=dtype)
    np.cumsum(np.cumsum(mask, axis=1, dtype=dtype), axis=2, out=table[:, 1:, 1:])
    w = window_size
    counts = table[:, w:, w:] - table[:, :-w, w:] - table[:, w:, :-w] + table[:, :-w, :-w]
    return counts.astype(np.int32)
