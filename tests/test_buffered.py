"""The buffered draw of whole sites (the early-stopping rows): beyond the threshold from the rest, linked
sites together, the share reached or the largest reachable one named."""

from __future__ import annotations

import numpy as np
import pytest

from socmap.buffered import draw_sites, linked_clusters, near_sites
from socmap.config import SplitConfig
from socmap.errors import SocmapError


def two_groups(sizes: tuple[int, int], gap_m: float = 50_000.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one site each in two tight groups (sites 100 m apart) `gap_m` apart: (xy, row_site)."""
    xy = np.concatenate([np.stack([np.arange(n) * 100.0 + g * gap_m, np.zeros(n)], axis=1)
                         for g, n in enumerate(sizes)])
    return xy, np.arange(len(xy))


def test_sites_linked_by_steps_within_the_threshold_form_one_cluster():
    xy, row_site = two_groups((30, 70))
    cluster = linked_clusters(xy, row_site, np.ones(100, dtype=bool), 150.0)
    assert len(np.unique(cluster[:30])) == 1 and len(np.unique(cluster[30:])) == 1 and cluster[0] != cluster[30]
    assert near_sites(xy, row_site, np.arange(100) == 29, 150.0).sum() == 1  # site 28 only


def test_a_share_between_the_clusters_names_the_largest_reachable():
    xy, row_site = two_groups((30, 70))
    cfg = SplitConfig(distance_threshold=0.15, stop_ratio=0.5)
    with pytest.raises(SocmapError, match=r"split.stop_ratio = 0.5 cannot be reached: at split.distance_threshold "
                                          r"= 0.15 km a run's 100 training rows form 2 linked clusters \(largest 70 "
                                          r"rows\); the largest reachable share below it is 0\.3000$"):
        draw_sites(xy, np.ones(100), row_site, np.ones(100, dtype=bool), cfg, np.random.default_rng(0))


def test_a_reachable_share_is_drawn_whole_and_apart():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50_000.0, (400, 2))
    cfg = SplitConfig(distance_threshold=1.0, stop_ratio=0.1)
    drawn = draw_sites(xy, rng.lognormal(3, 0.5, 400), np.arange(400), np.ones(400, dtype=bool), cfg, rng)
    assert drawn.sum() == 40  # one row a site: exactly ceil(0.1 · 400)
    gaps = np.sqrt(((xy[drawn][:, None] - xy[~drawn][None]) ** 2).sum(axis=2))
    assert gaps.min() > 1000.0
