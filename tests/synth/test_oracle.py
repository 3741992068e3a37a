"""Tests for sar2ndvi.synth.oracle: the NDVI floor of a simulated scene."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from sar2ndvi.errors import InputError
from sar2ndvi.synth.oracle import oracle_ndvi
from sar2ndvi.synth.vegetation import NDVI_ENV_GAIN, LandCover

#: Standard deviation of the simulator's NDVI texture before the class gain: two standardised
#: fields of amplitudes 0.04 (60 m) and 0.03 (one pixel), `vegetation._ndvi`.
TEXTURE_STD = float(np.hypot(0.04, 0.03))


def _truth(scene, name):
    with rasterio.open(scene.truth(name)) as src:
        return src.read(1)


def test_oracle_leaves_exactly_the_texture(scene):
    oracle = oracle_ndvi(scene)
    ndvi, cover = _truth(scene, "ndvi_pre"), _truth(scene, "land_cover_pre")
    residual = ndvi - oracle.values
    for code in (LandCover.FOREST, LandCover.SHRUB_GRASS):
        sel = cover == code
        assert sel.sum() > 2000, code  # the test scene holds both classes
        rmse = float(np.sqrt(np.mean(residual[sel] ** 2)))
        # what is left is the texture, scaled by the class gain (clipping trims a little)
        expected = TEXTURE_STD * (0.5 + 0.5 * NDVI_ENV_GAIN[code])
        assert 0.75 * expected < rmse < 1.1 * expected, (code, rmse, expected)
        # and it is the least-squares residual: no mean left in the class
        assert abs(float(residual[sel].mean())) < 1e-6
    # georeferenced on the scene's grid: other tools can align it with a feature store
    assert oracle.rio.crs == scene.grid.crs
    assert oracle.rio.transform() == scene.grid.transform
    assert oracle.shape == scene.grid.shape


def test_oracle_names_a_bad_period(scene):
    with pytest.raises(InputError, match="period"):
        oracle_ndvi(scene, period="during")
