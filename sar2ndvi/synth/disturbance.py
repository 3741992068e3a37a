"""Vegetation loss that is not a landslide: clear-cuts and cleared fields after the event.

A real post-event image shows more vegetation change than the landslides: forest harvest,
cleared or ploughed fields, burnt patches. They drop NDVI and radar volume scattering as a
fresh scar does, so a pixel-wise rule on dNDVI (and VV) flags them too; what sets them
apart is their shape (straight-edged, compact blocks, not slides tapering downslope) and
their place (gentle ground, not steep shaken slopes). Mapping methods are judged by how
they deal with them, as on real scenes.

Patches are rotated rectangles (the shapes of cut blocks and fields) of 60..250 m a side,
placed with probability proportional to vegetation cover on slopes under
`MAX_SLOPE_DEG`, never touching a landslide. Inside them NDVI becomes that of slash,
stubble and bare soil (uniform in `CLEARED_NDVI`, overlapping the landslide scars' range)
and the vegetation water content drops; the land cover becomes ``LandCover.CLEARED``.
They are written as a truth layer, not to the landslide inventory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from rasterio.features import rasterize
from scipy import ndimage
from shapely.affinity import rotate
from shapely.geometry import box

from sar2ndvi.synth.landslides import Landslides
from sar2ndvi.synth.terrain import Terrain
from sar2ndvi.synth.vegetation import LandCover, Vegetation

__all__ = ["CLEARED_NDVI", "Disturbances", "simulate_disturbances"]

#: Patch side lengths (m), uniform in this range; the aspect ratio follows from two draws.
SIDE_RANGE_M = (60.0, 250.0)
#: Harvest and clearing happen on workable ground: slopes under this (degrees).
MAX_SLOPE_DEG = 25.0
#: NDVI of a fresh clearing (slash, stubble, soil): overlaps the scars' 0.02..0.2.
CLEARED_NDVI = (0.08, 0.3)
#: Vegetation water content left on a clearing, kg/m^2.
CLEARED_WATER_CONTENT = (0.0, 0.15)
#: Pixels kept clear between a clearing and a landslide.
LANDSLIDE_GAP_PX = 3


@dataclass(frozen=True)
class Disturbances:
    """Non-landslide vegetation loss on the grid; arrays are (H, W).

    Attributes:
        mask: bool, True inside a clearing.
        count: number of clearings drawn (some may overlap or be clipped by the edge).
    """

    mask: np.ndarray
    count: int


def simulate_disturbances(
    terrain: Terrain,
    post: Vegetation,
    landslides: Landslides,
    rng: np.random.Generator,
    *,
    density_per_km2: float = 1.0,
) -> tuple[Vegetation, Disturbances]:
    """Clear vegetated patches of the post-event scene; returns (vegetation, disturbances).

    Args:
        terrain: the scene's terrain (slope, grid).
        post: post-event vegetation (after the landslides stripped theirs).
        landslides: the landslides (clearings keep `LANDSLIDE_GAP_PX` away from them).
        rng: the random generator (same seed, same clearings).
        density_per_km2: expected clearings per km^2 of the scene.
    """
    grid = terrain.grid
    h, w = grid.shape
    area_km2 = h * w * grid.resolution**2 / 1e6
    n = int(rng.poisson(density_per_km2 * area_km2))
    vegetated = np.isin(post.land_cover, [LandCover.FOREST, LandCover.SHRUB_GRASS])
    near_slide = ndimage.binary_dilation(landslides.mask, iterations=LANDSLIDE_GAP_PX)
    allowed = vegetated & (terrain.slope < MAX_SLOPE_DEG) & ~near_slide
    mask = np.zeros((h, w), dtype=bool)
    weights = allowed.ravel().astype(np.float64)
    if n == 0 or weights.sum() == 0:
        return post, Disturbances(mask, 0)
    centres = rng.choice(weights.size, size=n, p=weights / weights.sum())
    rows, cols = np.divmod(centres, w)
    sides = rng.uniform(*SIDE_RANGE_M, size=(n, 2))
    angles = rng.uniform(0.0, 90.0, size=n)
    xs, ys = grid.transform * (cols + 0.5, rows + 0.5)  # pixel centres, grid CRS (m)
    shapes = []
    for cx, cy, (a, b), angle in zip(xs, ys, sides, angles, strict=True):
        cx, cy = float(cx), float(cy)
        rect = box(cx - a / 2, cy - b / 2, cx + a / 2, cy + b / 2)
        shapes.append((rotate(rect, float(angle), origin=(cx, cy)), 1))
    mask = rasterize(shapes, out_shape=(h, w), transform=grid.transform, dtype="uint8") > 0
    # clearings stay on cleared-able ground: never on a slide, water or rock
    mask &= vegetated & ~near_slide
    k = int(mask.sum())
    cover = post.land_cover.copy()
    ndvi = post.ndvi.copy()
    wc = post.water_content.copy()
    cover[mask] = LandCover.CLEARED
    ndvi[mask] = rng.uniform(*CLEARED_NDVI, size=k).astype(np.float32)
    wc[mask] = rng.uniform(*CLEARED_WATER_CONTENT, size=k).astype(np.float32)
    cleared = replace(post, land_cover=cover, ndvi=ndvi, water_content=wc)
    return cleared, Disturbances(mask, n)
