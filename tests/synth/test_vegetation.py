"""Tests for sar2ndvi.synth.vegetation: land cover, NDVI and water content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sar2ndvi.synth.terrain import Terrain, fractal_terrain, terrain_from_dem
from sar2ndvi.synth.vegetation import LandCover, Vegetation, simulate_vegetation

DEM = Path(__file__).parents[2].parent / "shared/data/dem/bigtujunga-srtm30.tif"


@pytest.fixture(scope="module")
def dem_terrain() -> Terrain:
    if not DEM.is_file():
        pytest.skip(f"real DEM {DEM} is not available")
    return terrain_from_dem(DEM, shape=(512, 512))


@pytest.fixture(scope="module")
def dem_vegetation(dem_terrain: Terrain) -> Vegetation:
    return simulate_vegetation(dem_terrain, np.random.default_rng(3))


@pytest.fixture(scope="module")
def fractal() -> Terrain:
    return fractal_terrain((256, 256), np.random.default_rng(5), relief=(400.0, 1400.0))


def test_determinism(fractal: Terrain) -> None:
    a = simulate_vegetation(fractal, np.random.default_rng(9))
    b = simulate_vegetation(fractal, np.random.default_rng(9))
    c = simulate_vegetation(fractal, np.random.default_rng(10))
    for x, y in zip(
        (a.land_cover, a.ndvi, a.water_content),
        (b.land_cover, b.ndvi, b.water_content),
        strict=True,
    ):
        assert x.tobytes() == y.tobytes()
    assert a.ndvi.tobytes() != c.ndvi.tobytes()


def test_types_and_physical_ranges(dem_vegetation: Vegetation) -> None:
    v = dem_vegetation
    assert v.land_cover.dtype == np.uint8
    assert v.ndvi.dtype == np.float32
    assert v.water_content.dtype == np.float32
    assert np.isfinite(v.ndvi).all()
    assert np.isfinite(v.water_content).all()
    assert v.ndvi.min() >= -1.0
    assert v.ndvi.max() <= 1.0
    lc = v.land_cover
    water = v.ndvi[lc == LandCover.WATER]
    assert water.min() >= -0.3
    assert water.max() <= 0.0
    for bare in (LandCover.BARE_ROCK, LandCover.RIVER_BED):
        vals = v.ndvi[lc == bare]
        assert vals.min() >= 0.03
        assert vals.max() <= 0.25
        assert v.water_content[lc == bare].max() < 0.05
    forest = v.ndvi[lc == LandCover.FOREST]
    assert 0.6 < np.median(forest) < 0.9
    assert forest.max() <= 0.92
    wc_forest = v.water_content[lc == LandCover.FOREST]
    wc_shrub = v.water_content[lc == LandCover.SHRUB_GRASS]
    assert wc_forest.min() >= 1.2
    assert wc_forest.max() <= 5.5
    assert wc_shrub.min() >= 0.15
    assert wc_shrub.max() <= 1.3


def test_all_pre_event_classes_present(dem_vegetation: Vegetation) -> None:
    present = set(np.unique(dem_vegetation.land_cover).tolist())
    want = {
        LandCover.WATER,
        LandCover.RIVER_BED,
        LandCover.BARE_ROCK,
        LandCover.SHRUB_GRASS,
        LandCover.FOREST,
    }
    assert present == {int(c) for c in want}  # no LANDSLIDE before the event
    # Hillslope vegetation dominates; channels are a small fraction.
    lc = dem_vegetation.land_cover
    assert ((lc == LandCover.FOREST) | (lc == LandCover.SHRUB_GRASS)).mean() > 0.8
    assert (lc == LandCover.WATER).mean() < 0.01


def test_north_facing_greener(dem_terrain: Terrain, dem_vegetation: Vegetation) -> None:
    t, v = dem_terrain, dem_vegetation
    z = t.elevation
    band = (z > np.percentile(z, 30)) & (z < np.percentile(z, 70)) & (t.slope > 15)
    north = band & ((t.aspect < 45) | (t.aspect > 315))
    south = band & (np.abs(t.aspect - 180) < 45)
    assert north.sum() > 1000
    assert south.sum() > 1000
    assert v.ndvi[north].mean() > v.ndvi[south].mean() + 0.08


def test_greener_in_hollows_than_on_crests(
    dem_terrain: Terrain, dem_vegetation: Vegetation
) -> None:
    acc = dem_terrain.flow_accumulation
    hill = dem_vegetation.land_cover >= LandCover.SHRUB_GRASS
    crest = hill & (acc <= 100.0 * 1)
    hollow = hill & (acc > 100.0 * 50)
    assert dem_vegetation.ndvi[hollow].mean() > dem_vegetation.ndvi[crest].mean() + 0.03


def test_water_content_not_a_function_of_ndvi(dem_vegetation: Vegetation) -> None:
    v = dem_vegetation
    lc = v.land_cover
    ndvi_bin = (v.ndvi > 0.70) & (v.ndvi < 0.72) & (lc == LandCover.FOREST)
    wc = v.water_content[ndvi_bin]
    assert wc.size > 200
    assert wc.std() / wc.mean() > 0.15  # varies a lot at the same NDVI
    # Same NDVI, different cover: forest carries far more water than shrub/grass.
    shared = (v.ndvi > 0.55) & (v.ndvi < 0.65)
    forest = v.water_content[shared & (lc == LandCover.FOREST)]
    shrub = v.water_content[shared & (lc == LandCover.SHRUB_GRASS)]
    assert forest.size > 50
    assert shrub.size > 50
    assert forest.mean() > 1.8 * shrub.mean()
    # Still positively correlated with NDVI over the scene.
    assert np.corrcoef(v.ndvi.ravel(), v.water_content.ravel())[0, 1] > 0.5
