"""Clearings: non-landslide vegetation loss on gentle, vegetated ground, away from slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sar2ndvi.synth.disturbance import (
    CLEARED_NDVI,
    LANDSLIDE_GAP_PX,
    MAX_SLOPE_DEG,
    simulate_disturbances,
)
from sar2ndvi.synth.landslides import Landslides, simulate_landslides, strip_vegetation
from sar2ndvi.synth.terrain import Terrain, fractal_terrain, terrain_from_dem
from sar2ndvi.synth.vegetation import LandCover, Vegetation, simulate_vegetation

DEM = Path(__file__).parents[2].parent / "shared/data/dem/bigtujunga-srtm30.tif"


@pytest.fixture(scope="module")
def terrain() -> Terrain:
    if DEM.is_file():
        return terrain_from_dem(DEM, shape=(384, 384))
    return fractal_terrain((384, 384), np.random.default_rng(4))


@pytest.fixture(scope="module")
def event(terrain: Terrain) -> tuple[Vegetation, Vegetation, Landslides]:
    pre = simulate_vegetation(terrain, np.random.default_rng(2))
    slides = simulate_landslides(terrain, np.random.default_rng(8))
    return pre, strip_vegetation(pre, slides, np.random.default_rng(3)), slides


def test_clearings_change_only_gentle_vegetated_ground_away_from_slides(terrain, event):
    pre, post, slides = event
    cleared, found = simulate_disturbances(
        terrain, post, slides, np.random.default_rng(5), density_per_km2=3.0
    )
    m = found.mask
    assert found.count > 0
    assert m.sum() > 500
    # never on or next to a landslide; only where forest or shrub stood
    near = ndimage.binary_dilation(slides.mask, iterations=LANDSLIDE_GAP_PX)
    assert not (m & near).any()
    assert np.isin(post.land_cover[m], [LandCover.FOREST, LandCover.SHRUB_GRASS]).all()
    assert (cleared.land_cover[m] == LandCover.CLEARED).all()
    lo, hi = CLEARED_NDVI
    assert cleared.ndvi[m].min() >= lo
    assert cleared.ndvi[m].max() <= hi
    assert pre.ndvi[m].mean() - cleared.ndvi[m].mean() > 0.2
    # placed on gentle ground: most cleared pixels are below the slope limit
    assert (terrain.slope[m] < MAX_SLOPE_DEG + 10).mean() > 0.9
    # nothing else changes
    np.testing.assert_array_equal(cleared.ndvi[~m], post.ndvi[~m])
    np.testing.assert_array_equal(cleared.water_content[~m], post.water_content[~m])
    # the shapes are compact blocks: each clearing fills most of its bounding box
    labels, _ = ndimage.label(m)
    fills = [
        (labels[box] == i + 1).mean()
        for i, box in enumerate(ndimage.find_objects(labels))
        if (labels[box] == i + 1).sum() > 100
    ]
    assert np.median(fills) > 0.45


def test_clearings_are_seeded_and_scale_with_density(terrain, event):
    _, post, slides = event
    a = simulate_disturbances(terrain, post, slides, np.random.default_rng(9), density_per_km2=2.0)
    b = simulate_disturbances(terrain, post, slides, np.random.default_rng(9), density_per_km2=2.0)
    assert a[0].ndvi.tobytes() == b[0].ndvi.tobytes()
    more = simulate_disturbances(
        terrain, post, slides, np.random.default_rng(9), density_per_km2=6.0
    )
    assert more[1].mask.sum() > 1.5 * a[1].mask.sum()
    none, nothing = simulate_disturbances(
        terrain, post, slides, np.random.default_rng(9), density_per_km2=0.0
    )
    assert nothing.count == 0
    assert none is post
