"""The pictures: the figure writer gives equal bytes for equal figures, the map previews show each map."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from socmap.plots import save_figure


def test_equal_figures_give_equal_bytes_and_no_software_tag(tmp_path):
    for name in ("a.png", "b.png"):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        save_figure(fig, tmp_path / name)
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes() and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"matplotlib" not in data.lower() and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
    assert plt.get_fignums() == []  # closed


def test_previews_show_each_map_and_grey_the_pixels_outside_the_area_of_applicability(mapped):
    root, _ = mapped
    import json

    import matplotlib
    import matplotlib.image

    outside = {name: 1 - figures["aoa_inside"]
               for name, figures in json.loads((root / "metrics/map.json").read_text())["maps"].items()}
    for name, left in (("soc_2018", "viridis"), ("soc_2020", "viridis"), ("soc_change_2018_2020", "RdBu")):
        image = matplotlib.image.imread(root / "plots/map" / f"{name}.png")[..., :3]
        height, width, _ = image.shape
        assert width > 1.8 * height > 500  # two panels side by side
        for cmap, columns in ((left, slice(width // 20, width * 7 // 20)),
                              ("magma", slice(width * 11 // 20, width * 17 // 20))):  # value, then std
            crop = image[height // 4:height * 3 // 4:4, columns][:, ::4].reshape(-1, 3)  # within the panel's map
            lut = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
            greyed = 0.45 * lut + 0.55 * 0.5  # the colour map under the grey of the pixels outside the AOA
            # (blending rounds to 8 bits once more: a little more room for the greyed colours)
            plain, grey = ((np.abs(crop[:, None] - colours).max(axis=-1).min(axis=-1) < tolerance / 255)
                           for colours, tolerance in ((lut, 1.5), (greyed, 2.5)))
            assert (plain | grey).all(), (name, cmap)
            assert len(np.unique(crop, axis=0)) > 50, (name, cmap)  # the map's values, not one colour
            greyed_share = (grey & ~plain).mean()  # of the panel's middle, against the whole map's share outside
            assert greyed_share <= 2 * outside[name] + 0.02 and (greyed_share > 0.05) == (outside[name] > 0.2), \
                (name, cmap, greyed_share, outside[name])
