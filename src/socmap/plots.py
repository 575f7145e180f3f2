"""Pictures for people, every figure of the pipeline: quick looks at the simulated world, the evaluate
stage's scatter, residual map and variograms, the map previews; and the one figure writer."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import rasterio  # noqa: E402

from socmap.grid import NODATA  # noqa: E402
from socmap.io import atomic_path  # noqa: E402
from socmap.kriging import MAX_LAG_KM, ResidualField, empirical_variogram  # noqa: E402
from socmap.metrics import UNIT  # noqa: E402


def plot_synthetic(out_dir: Path, rasters: dict[tuple[str, str], np.ndarray], units: dict[str, str], grid,
                   cover: np.ndarray, cover_names: tuple[str, ...], table: pd.DataFrame) -> None:
    """A PNG per raster as written, keyed (band, year or "static"), nodata masked; and one of the
    hidden land cover with the survey sites on `grid`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for (band, label), raster in rasters.items():
        values = np.ma.masked_equal(raster, NODATA)
        fig, ax = plt.subplots(figsize=(6, 5.5))
        image = ax.imshow(values, cmap="terrain" if band == "Elevation" else "viridis")
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"{band} ({units[band]})")
        ax.set_title(f"{band}, {label} (simulated)")
        ax.set_axis_off()
        save_figure(fig, out_dir / f"{band}_{label}.png")
    fig, ax = plt.subplots(figsize=(6, 5.5))
    image = ax.imshow(cover, cmap=matplotlib.colors.ListedColormap(["#e6c35c", "#9ad36a", "#2f6b34", "#6b4b8a"]),
                      vmin=-0.5, vmax=len(cover_names) - 0.5)
    bar = fig.colorbar(image, ax=ax, shrink=0.8, ticks=range(len(cover_names)))
    bar.ax.set_yticklabels(cover_names)
    row, col = grid.index(table["x"].to_numpy(), table["y"].to_numpy())
    ax.scatter(col, row, s=2, c="k", alpha=0.5, linewidths=0)
    ax.set_title(f"Hidden land cover and {len(table)} survey rows (simulated)")
    ax.set_axis_off()
    save_figure(fig, out_dir / "land_cover.png")


def plot_scatter(table: pd.DataFrame, summary: dict, path: Path) -> None:
    """Predicted against observed test SOC with the interval of each row and the 1:1 line."""
    fig, ax = plt.subplots(figsize=(6, 6))
    limit = 1.05 * float(np.nanmax(table[["observed", "ensemble"]].to_numpy()))
    ax.vlines(table["observed"], table["lower"], table["upper"], color="0.6", alpha=0.3, lw=0.6,
              label=f"{summary['interval']:.0%} interval")
    ax.scatter(table["observed"], table["ensemble"], s=14, c="#1f5fa8", alpha=0.85, linewidths=0, zorder=3,
               label="test rows")
    ax.plot([0, limit], [0, limit], "k--", lw=1, label="1:1")
    ax.set(xlim=(0, limit), ylim=(0, limit), aspect="equal", xlabel="observed SOC (g/kg)",
           ylabel="predicted SOC (g/kg)", title="Predicted against observed, test rows")
    text = (f"R² {summary['r2']:.2f}   (Pearson² {summary['r2_pearson']:.2f})\nRMSE {summary['rmse']:.1f} g/kg   "
            f"bias {summary['bias']:+.1f} g/kg\nPICP {summary['picp']:.2f} (nominal {summary['interval']:.2f})   "
            f"n {summary['n']}")
    ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "0.8"})
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_residual_map(table: pd.DataFrame, samples: pd.DataFrame, outline: list, path: Path) -> None:
    """Test residuals (ensemble − observed) at their locations over the region, the other rows in grey."""
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    for xs, ys in outline:
        ax.plot(np.asarray(xs) / 1000, np.asarray(ys) / 1000, color="0.3", lw=1)
    ax.scatter(samples["x"] / 1000, samples["y"] / 1000, s=3, c="0.8", linewidths=0, label="other survey rows")
    limit = float(np.nanpercentile(np.abs(table["residual"]), 95)) or 1.0
    order = np.argsort(np.abs(table["residual"].to_numpy()))  # the largest errors drawn on top
    image = ax.scatter(table["x"].iloc[order] / 1000, table["y"].iloc[order] / 1000,
                       c=table["residual"].iloc[order], cmap="RdBu_r", vmin=-limit, vmax=limit, s=22,
                       edgecolors="0.2", linewidths=0.3, label="test rows")
    fig.colorbar(image, ax=ax, shrink=0.8, extend="both", label="predicted − observed SOC (g/kg)")
    ax.set(aspect="equal", xlabel="easting (km)", ylabel="northing (km)",
           title="Test residuals: red over-, blue under-predicted")
    ax.legend(loc="lower left", fontsize=8, markerscale=1.5)
    save_figure(fig, path, dpi=110)


def plot_distances(distances: dict[str, np.ndarray], path: Path) -> None:
    """The distributions (ECDF) of the distance to the nearest training row of the validation rows, the
    test rows and the map's pixels (km), which the split matches to each other."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    names = {"val": "validation rows", "test": "test rows", "prediction": "map pixels"}
    for (kind, label), colour in zip(names.items(), ("#1f5fa8", "#c0392b", "0.2")):
        values = np.sort(np.asarray(distances[kind], dtype=float))
        if values.size:
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=colour,
                    label=f"{label} (median {np.median(values):.1f} km)")
    ax.set(xlim=(0, None), ylim=(0, 1), xlabel="distance to the nearest training row (km)",
           ylabel="share at most this far", title="Validation and test look like prediction")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, dpi=110)


def plot_coverage_by(by: pd.DataFrame, interval: float, path: Path) -> None:
    """Observed against nominal coverage of the test rows, one line per bin of the distance to the
    nearest training row (`scoring.coverage_by`'s table), the 1:1 line, and each bin's rows."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="nominal")
    distance = by[by["by"] == "distance"]
    for (label, group), colour in zip(distance.groupby("bin", sort=False), plt.cm.viridis(np.linspace(0, 0.9, 5))):
        ax.plot(group["nominal"], group["observed"], "o-", color=colour, ms=3,
                label=f"{label} from training ({group['rows'].iloc[0]} rows)")
    ax.axvline(interval, color="0.7", lw=0.8)
    ax.set(xlim=(0.45, 1.0), ylim=(0.3, 1.0), xlabel="nominal coverage", ylabel="observed coverage (test rows)",
           title="Interval coverage by distance to the nearest training row")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=110)


def plot_variograms(fields: list[ResidualField], path: Path) -> None:
    """Each run's empirical variogram of its training residuals (points) and the fitted model (line); with no
    fields (no kriging) a picture that says so, so that the plots DVC lists exist for any params."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if not fields:
        ax.text(0.5, 0.5, "evaluate.kriging: none\nno residual variogram was fitted", ha="center", va="center")
        ax.set_axis_off()
        save_figure(fig, path, dpi=110)
        return
    for run, field in enumerate(fields):
        lags, gamma, pairs = empirical_variogram(field.xy, field.residuals)
        colour = plt.cm.tab10(run % 10)
        used = pairs > 0
        ax.scatter(lags[used], gamma[used], s=12, color=colour, alpha=0.7)
        h = np.linspace(0.0, MAX_LAG_KM, 200)
        v = field.variogram
        ax.plot(h, v(h), color=colour, lw=1.2,
                label=f"run {run}: nugget {v.nugget:.3g}, sill {v.sill:.3g}, range a {v.range_km:.1f} km")
    unit = "(log ratio)²" if fields[0].space == "log" else "(g/kg)²"
    ax.set(xlim=(0, MAX_LAG_KM), ylim=(0, None), xlabel="distance between training rows (km)",
           ylabel=f"semivariance {unit}",
           title="Variogram of the runs' training residuals (exponential: 95 % of the sill at 3a)")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path, dpi=110)


def preview(path: str | Path, png: str | Path, outline: list, title: str, aoa_band: int | None = None,
            max_pixels: int = 900) -> None:
    """A PNG of a map's first two bands side by side (value and uncertainty), with colour bars in g/kg
    and the region outline, the pixels that are 0 in `aoa_band` (1-based: outside the area of
    applicability) greyed; read at most `max_pixels` per side (the COG's overviews serve it)."""
    with rasterio.open(path) as src:
        step = max(1, math.ceil(max(src.width, src.height) / max_pixels))
        shape = (math.ceil(src.height / step), math.ceil(src.width / step))
        values = src.read([1, 2], out_shape=(2, *shape), masked=True)
        names = src.descriptions[:2]
        # nearest, not the overviews' average: a pixel is inside or not
        outside = None if aoa_band is None else (src.read(aoa_band, out_shape=shape, masked=True,
                                                          resampling=rasterio.enums.Resampling.nearest) == 0
                                                 ).filled(False)
        left, bottom, right, top = src.bounds
    change = "change" in (names[0] or "")
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), constrained_layout=True)
    for i, ax in enumerate(axes):
        data = values[i]
        finite = data.compressed()
        low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        if change and i == 0:
            high = max(abs(low), abs(high), 1e-6)
            low, cmap = -high, "RdBu"
        else:
            cmap = "viridis" if i == 0 else "magma"
        image = ax.imshow(data, cmap=cmap, vmin=low, vmax=high, extent=(left, right, bottom, top),
                          interpolation="nearest")
        if outside is not None and outside.any():
            ax.imshow(np.ma.masked_where(~outside, outside), cmap=matplotlib.colors.ListedColormap(["0.5"]),
                      alpha=0.55, extent=(left, right, bottom, top), interpolation="nearest")
            share = outside.sum() / max(int((~np.ma.getmaskarray(values[0])).sum()), 1)
            label = f"outside the area of applicability ({share:.0%} of the mapped pixels)"
            ax.legend(handles=[matplotlib.patches.Patch(facecolor="0.5", alpha=0.55, label=label)], loc="lower left",
                      fontsize=8)
        for xs, ys in outline:
            ax.plot(xs, ys, color="k", linewidth=0.8)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_aspect("equal")
        ax.set_title(names[i])
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.85, label=f"{names[i]} ({UNIT})")
    fig.suptitle(title)
    save_figure(fig, png)


def plot_polygons(table: pd.DataFrame, shapes: list, outline: list, path: Path, title: str) -> None:
    """A choropleth of each polygon's mean SOC and, beside it, the half width of its interval (g/kg)."""
    import shapely
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Polygon as Patch

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), constrained_layout=True)
    half = (table["upper"] - table["lower"]) / 2 if "upper" in table else pd.Series(np.nan, index=table.index)
    for ax, values, label, cmap in ((axes[0], table.get("mean"), f"mean SOC ({UNIT})", "viridis"),
                                    (axes[1], half, f"interval half width ({UNIT})", "magma")):
        patches, colours = [], []
        for shape, value in zip(shapes, np.asarray(values, dtype=float)):
            for part in getattr(shape, "geoms", [shape]):
                patches.append(Patch(np.asarray(shapely.get_exterior_ring(part).coords)[:, :2], closed=True))
                colours.append(value)
        collection = PatchCollection(patches, cmap=cmap, edgecolor="0.2", linewidth=0.4)
        colours = np.ma.masked_invalid(colours)
        collection.set_array(colours)
        ax.add_collection(collection)
        for xs, ys in outline:
            ax.plot(xs, ys, color="k", linewidth=0.8)
        ax.autoscale_view()
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label)
        fig.colorbar(collection, ax=ax, shrink=0.85, label=label)
    fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 90) -> None:
    """Write a figure as PNG atomically (no software tag, so equal figures give equal bytes) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png", metadata={"Software": None})
    plt.close(fig)
