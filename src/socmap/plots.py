"""Pictures for people: the one figure writer, and quick looks at the simulated world."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from socmap.grid import NODATA  # noqa: E402
from socmap.io import atomic_path  # noqa: E402


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


def save_figure(fig, path: str | Path, dpi: int = 90) -> None:
    """Write a figure as PNG atomically (no software tag, so equal figures give equal bytes) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png", metadata={"Software": None})
    plt.close(fig)
