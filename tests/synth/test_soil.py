"""Tests for sar2ndvi.synth.soil: soil moisture from the topographic wetness index."""

from __future__ import annotations

import numpy as np
import pytest

from sar2ndvi.errors import InputError
from sar2ndvi.synth.soil import soil_moisture, topographic_wetness_index
from sar2ndvi.synth.terrain import Terrain, fractal_terrain


@pytest.fixture(scope="module")
def terrain() -> Terrain:
    return fractal_terrain((256, 256), np.random.default_rng(21), relief=(400.0, 1400.0))


def test_shape_range_dtype(terrain: Terrain) -> None:
    sm = soil_moisture(terrain, np.random.default_rng(0), 4)
    assert sm.shape == (4, 256, 256)
    assert sm.dtype == np.float32
    assert sm.min() >= 0.02
    assert sm.max() <= 0.50
    assert np.isfinite(sm).all()


def test_determinism_and_acquisitions_differ(terrain: Terrain) -> None:
    a = soil_moisture(terrain, np.random.default_rng(1), 3)
    b = soil_moisture(terrain, np.random.default_rng(1), 3)
    assert a.tobytes() == b.tobytes()
    # Each acquisition has its own level and anomaly.
    assert np.abs(a[0] - a[1]).mean() > 0.01
    assert np.abs(a[1] - a[2]).mean() > 0.01


def test_mean_levels_are_followed(terrain: Terrain) -> None:
    levels = np.array([0.1, 0.3])
    sm = soil_moisture(terrain, np.random.default_rng(2), 2, mean_levels=levels)
    np.testing.assert_allclose(np.median(sm, axis=(1, 2)), levels, atol=0.03)
    with pytest.raises(InputError, match="mean_levels"):
        soil_moisture(terrain, np.random.default_rng(2), 3, mean_levels=levels)
    with pytest.raises(InputError, match="mean_levels"):
        soil_moisture(terrain, np.random.default_rng(2), 2, mean_levels=np.array([0.1, 0.9]))
    with pytest.raises(InputError, match="n"):
        soil_moisture(terrain, np.random.default_rng(2), 0)


def test_wetter_in_valleys_than_on_ridges(terrain: Terrain) -> None:
    twi = topographic_wetness_index(terrain)
    sm = soil_moisture(terrain, np.random.default_rng(3), 3).mean(axis=0)
    valleys = twi > np.percentile(twi, 90)
    ridges = twi < np.percentile(twi, 10)
    assert sm[valleys].mean() > sm[ridges].mean() + 0.05
    assert np.corrcoef(twi.ravel(), sm.ravel())[0, 1] > 0.5


def test_twi_formula(terrain: Terrain) -> None:
    twi = topographic_wetness_index(terrain)
    r, c = 100, 120
    a = terrain.flow_accumulation[r, c] / terrain.grid.resolution
    want = np.log(a / max(np.tan(np.radians(terrain.slope[r, c])), 1e-3))
    assert twi[r, c] == pytest.approx(want, rel=1e-5)
