"""Tests for sar2ndvi.synth.terrain: Horn slope/aspect, D8 accumulation, DEM reading, fractals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from sar2ndvi.errors import InputError
from sar2ndvi.synth.terrain import (
    flow_accumulation,
    fractal_terrain,
    horn_slope_aspect,
    terrain_from_dem,
)

DEM = Path(__file__).parents[2].parent / "shared/data/dem/bigtujunga-srtm30.tif"
needs_dem = pytest.mark.skipif(not DEM.is_file(), reason=f"real DEM {DEM} is not available")


def plane(shape: tuple[int, int], res: float, grad_east: float, grad_north: float) -> np.ndarray:
    """z = gx * x + gy * y with x east and y north (row 0 north)."""
    rows, cols = np.indices(shape, dtype=np.float64)
    return grad_east * cols * res + grad_north * (-rows) * res + 1000.0


@settings(max_examples=60, deadline=None)
@given(
    direction=st.floats(0.0, 359.9),
    magnitude=st.floats(0.01, 3.0),
    res=st.sampled_from([1.0, 10.0, 30.0]),
)
def test_horn_on_tilted_planes(direction: float, magnitude: float, res: float) -> None:
    # A plane facing `direction` (downslope bearing): z decreases along that bearing.
    d = math.radians(direction)
    z = plane((9, 11), res, -magnitude * math.sin(d), -magnitude * math.cos(d))
    slope, aspect = horn_slope_aspect(z, res)
    assert slope.dtype == np.float32
    assert aspect.dtype == np.float32
    np.testing.assert_allclose(slope[1:-1, 1:-1], math.degrees(math.atan(magnitude)), atol=1e-3)
    diff = (aspect[1:-1, 1:-1] - direction + 180.0) % 360.0 - 180.0
    np.testing.assert_allclose(diff, 0.0, atol=1e-2)
    assert np.all((aspect >= 0) & (aspect < 360))
    assert np.all((slope >= 0) & (slope < 90))


@pytest.mark.parametrize(
    ("grad_east", "grad_north", "expected"),
    [(-1.0, 0.0, 90.0), (1.0, 0.0, 270.0), (0.0, 1.0, 180.0), (0.0, -1.0, 0.0)],
)
def test_aspect_cardinal_directions(grad_east: float, grad_north: float, expected: float) -> None:
    _, aspect = horn_slope_aspect(plane((5, 5), 10.0, grad_east, grad_north), 10.0)
    centre = float(aspect[2, 2])
    assert min(abs(centre - expected), abs(centre - expected - 360.0)) < 1e-4


def test_horn_matches_hand_computation() -> None:
    rng = np.random.default_rng(7)
    z = rng.uniform(0.0, 50.0, size=(3, 3))
    res = 10.0
    (a, b, c), (d, _e, f), (g, h, i) = z
    dzdx = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * res)  # east
    dzdy = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * res)  # north
    want_slope = math.degrees(math.atan(math.hypot(dzdx, dzdy)))
    want_aspect = math.degrees(math.atan2(-dzdx, -dzdy)) % 360.0
    slope, aspect = horn_slope_aspect(z, res)
    assert slope[1, 1] == pytest.approx(want_slope, abs=1e-4)
    assert aspect[1, 1] == pytest.approx(want_aspect, abs=1e-3)


def test_flat_and_edges() -> None:
    slope, aspect = horn_slope_aspect(np.full((6, 7), 123.0), 10.0)
    assert np.all(slope == 0)
    assert np.all(aspect == 0)
    slope, aspect = horn_slope_aspect(plane((6, 7), 10.0, 0.5, 0.0), 10.0)
    assert np.isfinite(slope).all()
    assert np.isfinite(aspect).all()
    # Edge replication halves the difference on the edge columns, but never gives NaN.
    assert slope[:, 0].max() < slope[:, 3].min()


def test_flow_accumulation_inclined_plane() -> None:
    # Descends to the south: every cell drains straight south; row r collects r + 1 cells.
    h, w, res = 12, 7, 10.0
    acc = flow_accumulation(plane((h, w), res, 0.0, 0.3), res)
    want = (np.arange(h)[:, None] + 1) * np.ones((1, w)) * res**2
    np.testing.assert_array_equal(acc, want.astype(np.float32))


def test_flow_accumulation_v_valley() -> None:
    # Steep sides drain horizontally to the centre column, which drains south.
    h, w, res, c = 15, 11, 10.0, 5
    rows, cols = np.indices((h, w), dtype=np.float64)
    z = 5.0 * np.abs(cols - c) * res + 0.5 * (h - rows) * res
    acc = flow_accumulation(z, res) / res**2
    side = np.minimum(cols, w - 1 - cols) + 1  # cells from the divide to here
    np.testing.assert_array_equal(acc[:, :c], side[:, :c])
    np.testing.assert_array_equal(acc[:, c + 1 :], side[:, c + 1 :])
    np.testing.assert_array_equal(acc[:, c], (np.arange(h) + 1) * w)


def test_flow_accumulation_fills_pits_and_conserves_area() -> None:
    # A cone draining to one bottom-edge outlet, with a 5x5 pit dug in the middle.
    h, w, res = 21, 21, 10.0
    rows, cols = np.indices((h, w), dtype=np.float64)
    z = np.hypot(rows - (h - 1), cols - w // 2) * res * 0.5 + 100.0
    z[8:13, 8:13] -= 40.0
    acc = flow_accumulation(z, res)
    assert acc[h - 1, w // 2] == pytest.approx(h * w * res**2)
    assert acc.min() >= res**2
    # Every other cell carries less than the outlet.
    assert (acc < h * w * res**2).sum() == h * w - 1


@needs_dem
def test_terrain_from_real_dem() -> None:
    t = terrain_from_dem(DEM, shape=(256, 384))
    assert t.grid.shape == (256, 384)
    assert t.grid.resolution == 10.0
    assert t.grid.crs.to_epsg() == 32611
    west, north = t.grid.transform.c, t.grid.transform.f
    assert west % 60 == 0
    assert north % 60 == 0
    z = t.elevation
    assert z.dtype == np.float32
    assert np.isfinite(z).all()
    assert 300.0 <= z.min() < z.max() <= 2310.0
    assert z.max() - z.min() > 300.0  # real mountains in the crop
    for arr in (t.slope, t.aspect, t.flow_accumulation):
        assert arr.shape == (256, 384)
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all()
    # SRTM mountains: a realistic slope distribution.
    assert 12.0 < float(np.median(t.slope)) < 35.0


@needs_dem
def test_terrain_from_dem_full_extent_and_too_large() -> None:
    t = terrain_from_dem(DEM, resolution=60.0)
    # 1197 x 643 at 30 m -> about 598 x 321 at 60 m.
    assert 590 <= t.grid.width <= 600
    assert 315 <= t.grid.height <= 322
    assert t.elevation.min() == pytest.approx(315.0, abs=25.0)
    assert t.elevation.max() == pytest.approx(2295.0, abs=25.0)
    with pytest.raises(InputError, match="maximum"):
        terrain_from_dem(DEM, shape=(t.grid.height + 1, 10), resolution=60.0)


def test_terrain_from_dem_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does-not-exist\.tif"):
        terrain_from_dem(tmp_path / "does-not-exist.tif")
    nocrs = tmp_path / "nocrs.tif"
    profile = dict(
        driver="GTiff",
        width=20,
        height=20,
        count=1,
        dtype="float32",
        transform=Affine(30.0, 0, 400000.0, 0, -30.0, 3800000.0),
    )
    with rasterio.open(nocrs, "w", **profile) as dst:
        dst.write(np.ones((1, 20, 20), np.float32))
    with pytest.raises(InputError, match=r"no CRS.*gdal_edit\.py"):
        terrain_from_dem(nocrs)


def test_terrain_from_geographic_dem_and_nodata(tmp_path: Path) -> None:
    path = tmp_path / "geo.tif"
    h, w = 120, 120
    lon0, lat0, step = -118.2, 34.3, 1.0 / 3600.0  # 1 arc-second
    rows, cols = np.indices((h, w))
    z = (500.0 + 3.0 * rows + 2.0 * cols).astype(np.float32)
    z[60:62, 60:62] = -9999.0  # a small hole
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=1,
        dtype="float32",
        nodata=-9999.0,
        crs="EPSG:4326",
        transform=Affine(step, 0, lon0, 0, -step, lat0),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z[None])
    t = terrain_from_dem(path, resolution=10.0)
    assert t.grid.crs.to_epsg() == 32611  # UTM zone of -118.2
    assert t.grid.transform.c % 60 == 0
    assert t.grid.transform.f % 60 == 0
    assert np.isfinite(t.elevation).all()
    assert t.elevation.min() > 480.0
    assert t.elevation.max() < 1100.0
    z[40:80, 40:80] = -9999.0  # an interior hole, ~11% of the DEM: too big to fill
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z[None])
    with pytest.raises(InputError, match="nodata"):
        terrain_from_dem(path)


def test_fractal_terrain_determinism_relief_and_slopes() -> None:
    a = fractal_terrain((512, 512), np.random.default_rng(11))
    b = fractal_terrain((512, 512), np.random.default_rng(11))
    c = fractal_terrain((512, 512), np.random.default_rng(12))
    assert a.elevation.tobytes() == b.elevation.tobytes()
    assert a.flow_accumulation.tobytes() == b.flow_accumulation.tobytes()
    assert a.elevation.tobytes() != c.elevation.tobytes()
    assert a.elevation.min() == pytest.approx(300.0, abs=1.0)
    assert a.elevation.max() == pytest.approx(2300.0, abs=1.0)
    median = float(np.median(a.slope))
    assert 20.0 <= median <= 31.0
    steep = float(((a.slope > 35.0) & (a.slope < 60.0)).mean())
    assert 0.05 < steep < 0.5
    assert a.grid.crs.to_epsg() == 32611
    assert (a.grid.transform.c, a.grid.transform.f) == (380040.0, 3800040.0)


def test_fractal_terrain_bad_input() -> None:
    with pytest.raises(InputError, match="relief"):
        fractal_terrain((64, 64), np.random.default_rng(0), relief=(500.0, 100.0))
