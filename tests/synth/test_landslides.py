"""Tests for sar2ndvi.synth.landslides: shaking, susceptibility, polygons, inventory."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from rasterio.features import rasterize
from scipy import ndimage

from sar2ndvi.synth.grid import Grid
from sar2ndvi.synth.landslides import (
    Earthquake,
    Landslides,
    default_earthquake,
    simulate_landslides,
    strip_vegetation,
    write_inventory,
)
from sar2ndvi.synth.terrain import Terrain, build_terrain, fractal_terrain, terrain_from_dem
from sar2ndvi.synth.vegetation import LandCover, simulate_vegetation

DEM = Path(__file__).parents[2].parent / "shared/data/dem/bigtujunga-srtm30.tif"


@pytest.fixture(scope="module")
def terrain() -> Terrain:
    if DEM.is_file():
        return terrain_from_dem(DEM, shape=(512, 512))
    return fractal_terrain((512, 512), np.random.default_rng(4))


@pytest.fixture(scope="module")
def slides(terrain: Terrain) -> Landslides:
    return simulate_landslides(terrain, np.random.default_rng(8))


def test_counts_and_cover(slides: Landslides, terrain: Terrain) -> None:
    n = len(slides.inventory)
    assert 30 <= n <= 150
    assert 0.01 <= slides.mask.mean() <= 0.06
    assert slides.mask.dtype == bool
    assert slides.label.dtype == np.int32
    assert slides.shaking.dtype == np.float32
    assert slides.susceptibility.dtype == np.float32
    assert slides.susceptibility.min() >= 0.0
    assert slides.susceptibility.max() <= 1.0
    inv = slides.inventory
    assert list(inv.columns) == [
        "id",
        "area_m2",
        "length_m",
        "width_m",
        "mean_slope_deg",
        "geometry",
    ]
    assert inv.crs == terrain.grid.crs
    assert (inv.geom_type == "Polygon").all()
    assert inv["id"].tolist() == list(range(1, n + 1))
    pixel = terrain.grid.resolution**2
    assert (inv["area_m2"] >= 3 * pixel).all()
    assert (inv["length_m"] >= inv["width_m"]).all()
    # Median length of the order of 150-250 m (merged slides are longer).
    assert 100.0 < inv["length_m"].median() < 300.0


def test_mask_is_rasterised_inventory(slides: Landslides, terrain: Terrain) -> None:
    g = terrain.grid
    shapes = zip(slides.inventory.geometry, slides.inventory["id"], strict=True)
    label = rasterize(shapes, out_shape=g.shape, transform=g.transform, fill=0, dtype="int32")
    np.testing.assert_array_equal(label, slides.label)
    np.testing.assert_array_equal(slides.mask, label > 0)
    counts = np.bincount(slides.label.ravel())[1:]
    assert counts.min() >= 4  # every polygon covers a few pixels
    # mean_slope_deg is the mean slope under each polygon.
    want = ndimage.mean(terrain.slope, labels=slides.label, index=slides.inventory["id"])
    np.testing.assert_allclose(slides.inventory["mean_slope_deg"], want, rtol=1e-5)


def test_landslides_on_steep_slopes(slides: Landslides, terrain: Terrain) -> None:
    assert terrain.slope[slides.mask].mean() > terrain.slope.mean() + 3.0
    # Crown-area susceptibility is far above the scene's.
    assert slides.susceptibility[slides.mask].mean() > 1.5 * slides.susceptibility.mean()


def test_elongated_downslope(slides: Landslides, terrain: Terrain) -> None:
    inv = slides.inventory
    asp = np.radians(terrain.aspect)
    ids = inv["id"].to_numpy()
    east = ndimage.mean(np.sin(asp), labels=slides.label, index=ids)
    north = ndimage.mean(np.cos(asp), labels=slides.label, index=ids)
    mean_aspect = np.degrees(np.arctan2(east, north)) % 180.0
    ok, total = 0, 0
    for geom, bearing in zip(inv.geometry, mean_aspect, strict=True):
        xy = np.asarray(shapely.minimum_rotated_rectangle(geom).exterior.coords)[:3]
        sides = np.diff(xy, axis=0)
        longest = sides[np.argmax(np.hypot(*sides.T))]
        if np.hypot(*sides.T).max() < 1.3 * np.hypot(*sides.T).min():
            continue  # nearly square: no principal axis to compare
        axis = np.degrees(np.arctan2(longest[0], longest[1])) % 180.0
        diff = abs((axis - bearing + 90.0) % 180.0 - 90.0)
        ok += diff < 30.0
        total += 1
    assert total > 20
    assert ok / total > 0.7


def corrugated_terrain() -> Terrain:
    """Ridges running north-south: the same slope distribution everywhere across the scene."""
    grid = Grid.from_origin("EPSG:32611", 400020.0, 3800040.0, 10.0, 800, 160)
    cols = np.arange(800)[None, :].repeat(160, axis=0)
    z = 800.0 + 120.0 * np.abs(np.sin(np.pi * cols / 50.0))
    return build_terrain(z.astype(np.float32), grid)


def test_density_decreases_with_distance() -> None:
    t = corrugated_terrain()
    left, bottom, _right, top = t.grid.bounds
    quake = Earthquake(epicentre=(left, 0.5 * (bottom + top)), magnitude=6.5, depth_km=3.0)
    s = simulate_landslides(t, np.random.default_rng(1), quake, density_per_km2=8.0)
    # Shaking decays eastwards, away from the epicentre.
    assert np.all(np.diff(s.shaking[80, :]) < 0)
    thirds = np.array_split(np.arange(t.grid.width), 3)
    fractions = [s.mask[:, cols].mean() for cols in thirds]
    assert fractions[0] > 1.8 * fractions[2]  # about 2.5x in expectation
    assert fractions[0] > fractions[1] or fractions[1] > fractions[2]
    # Same slopes everywhere, so the susceptibility falls with distance too.
    susc = [s.susceptibility[:, cols].mean() for cols in thirds]
    assert susc[0] > susc[1] > susc[2]


def test_default_earthquake(terrain: Terrain) -> None:
    q = default_earthquake(terrain.grid)
    left, bottom, _right, top = terrain.grid.bounds
    assert q.magnitude == 6.5
    assert left - 5000.0 < q.epicentre[0] < left
    assert bottom < q.epicentre[1] < top


def test_determinism(terrain: Terrain) -> None:
    small = Terrain(
        Grid.from_origin(
            terrain.grid.crs, terrain.grid.transform.c, terrain.grid.transform.f, 10.0, 200, 200
        ),
        *(
            a[:200, :200]
            for a in (terrain.elevation, terrain.slope, terrain.aspect, terrain.flow_accumulation)
        ),
    )
    a = simulate_landslides(small, np.random.default_rng(5), density_per_km2=20.0)
    b = simulate_landslides(small, np.random.default_rng(5), density_per_km2=20.0)
    c = simulate_landslides(small, np.random.default_rng(6), density_per_km2=20.0)
    assert a.label.tobytes() == b.label.tobytes()
    assert a.inventory.equals(b.inventory)
    assert a.label.tobytes() != c.label.tobytes()


def test_geojson_round_trip(slides: Landslides, tmp_path: Path) -> None:
    p1, p2 = tmp_path / "a.geojson", tmp_path / "b.geojson"
    write_inventory(slides, p1)
    write_inventory(slides, p2)
    assert p1.read_bytes() == p2.read_bytes()
    write_inventory(slides, p1)  # overwrite works and stays identical
    assert p1.read_bytes() == p2.read_bytes()
    assert b"EPSG::32611" in p1.read_bytes()
    back = gpd.read_file(p1)
    assert back.crs.to_epsg() == 32611
    assert back["id"].tolist() == slides.inventory["id"].tolist()
    np.testing.assert_allclose(back.geometry.area, slides.inventory.geometry.area, rtol=1e-6)
    assert list(tmp_path.iterdir()) == [p1, p2] or sorted(tmp_path.iterdir()) == [p1, p2]


def test_strip_vegetation(slides: Landslides, terrain: Terrain) -> None:
    pre = simulate_vegetation(terrain, np.random.default_rng(2))
    post = strip_vegetation(pre, slides, np.random.default_rng(3))
    again = strip_vegetation(pre, slides, np.random.default_rng(3))
    assert post.ndvi.tobytes() == again.ndvi.tobytes()
    m = slides.mask
    assert np.all(post.land_cover[m] == LandCover.LANDSLIDE)
    assert post.ndvi[m].min() >= 0.02
    assert post.ndvi[m].max() <= 0.2
    assert post.water_content[m].max() <= 0.05
    # Outside the slides nothing changes; inside NDVI dropped.
    np.testing.assert_array_equal(post.ndvi[~m], pre.ndvi[~m])
    np.testing.assert_array_equal(post.land_cover[~m], pre.land_cover[~m])
    assert pre.ndvi[m].mean() - post.ndvi[m].mean() > 0.3
    assert post.ndvi.dtype == np.float32
    assert post.land_cover.dtype == np.uint8
