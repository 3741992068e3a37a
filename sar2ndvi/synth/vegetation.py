"""Pre-event land cover, NDVI and vegetation water content, driven by the terrain.

Land cover is drawn as the arg-max of environmental class scores plus spatially correlated
noise (a spatial Gumbel-max / softmax trick), so classes form patches whose odds follow the
environment. NDVI is a per-class level modulated by the same environment and fine texture.
Water content (the radar's vegetation descriptor) depends on the class and on an independent
canopy-structure field, so it is correlated with NDVI without being a function of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from sar2ndvi.synth.fields import gaussian_random_field
from sar2ndvi.synth.terrain import Terrain

__all__ = ["LandCover", "Vegetation", "simulate_vegetation"]


class LandCover(IntEnum):
    """Land-cover codes stored as uint8."""

    WATER = 1
    RIVER_BED = 2
    BARE_ROCK = 3
    SHRUB_GRASS = 4
    FOREST = 5
    LANDSLIDE = 6  # fresh scar, post-event only
    CLEARED = 7  # clear-cut or cleared field, post-event only (synth/disturbance.py)


@dataclass(frozen=True)
class Vegetation:
    """Vegetation state of a scene; arrays are (H, W).

    Attributes:
        land_cover: uint8 LandCover codes.
        ndvi: float32 NDVI in [-1, 1] (water about -0.3..0, bare 0.05..0.2, forest to ~0.9).
        water_content: float32 vegetation water content, kg/m^2 (forest ~1.5-5,
            shrub/grass ~0.2-1.2, bare ~0).
    """

    land_cover: np.ndarray
    ndvi: np.ndarray
    water_content: np.ndarray


# Channel thresholds: contributing area (m^2) above which a channel is a gravel river bed /
# carries a water line. In small scenes they fall to a fraction of the largest catchment so
# that the main channel always shows.
RIVER_BED_AREA_M2 = 2.0e6
WATER_AREA_M2 = 8.0e6
RIVER_BED_FRACTION_OF_MAX = 0.10
WATER_FRACTION_OF_MAX = 0.35
#: River-bed half-width (m) per sqrt(km^2) of catchment (hydraulic geometry, w ~ A^0.5).
RIVER_BED_HALF_WIDTH_M_PER_SQRT_KM2 = 8.0

#: Correlation length (m) of the land-cover patch noise.
PATCH_CORRELATION_M = 120.0
#: Correlation length (m) of the canopy-structure field behind water content.
STRUCTURE_CORRELATION_M = 200.0

# NDVI level and physical clip range per class.
NDVI_LEVEL = {
    LandCover.WATER: -0.12,
    LandCover.RIVER_BED: 0.12,
    LandCover.BARE_ROCK: 0.12,
    LandCover.SHRUB_GRASS: 0.45,
    LandCover.FOREST: 0.74,
}
NDVI_RANGE = {
    LandCover.WATER: (-0.3, 0.0),
    LandCover.RIVER_BED: (0.05, 0.25),
    LandCover.BARE_ROCK: (0.03, 0.2),
    LandCover.SHRUB_GRASS: (0.18, 0.75),
    LandCover.FOREST: (0.5, 0.92),
}
#: How strongly each class's NDVI follows the environment (bare ground barely does).
NDVI_ENV_GAIN = {
    LandCover.WATER: 0.0,
    LandCover.RIVER_BED: 0.2,
    LandCover.BARE_ROCK: 0.2,
    LandCover.SHRUB_GRASS: 1.0,
    LandCover.FOREST: 0.6,
}


@dataclass(frozen=True)
class _Environment:
    """Dimensionless environmental drivers, (H, W) float64, roughly in [-1, 1]."""

    band: np.ndarray  # 1 in the optimal elevation band, falling off above/below
    high: np.ndarray  # 0 below, up to 1 at the top of the scene's relief
    ridge: np.ndarray  # + on crests, - in hollows (relative elevation)
    north: np.ndarray  # northness cos(aspect) * sin(slope)
    wet: np.ndarray  # scaled log contributing area, 0 on crests to ~1 in channels
    steep: np.ndarray  # (slope - 25 deg) / 20 deg


def _environment(terrain: Terrain) -> _Environment:
    z = terrain.elevation.astype(np.float64)
    lo, hi = np.percentile(z, [2.0, 98.0])
    zn = (z - lo) / max(hi - lo, 1.0)
    # Optimum band in the middle/upper-middle of the relief (mild, wetter mid-slopes).
    band = np.exp(-(((zn - 0.55) / 0.4) ** 2))
    high = np.clip((zn - 0.75) / 0.25, 0.0, 1.0)
    # Relative elevation against a ~500 m neighbourhood: crests are dry, thin-soiled.
    sigma = 500.0 / terrain.grid.resolution
    rel = z - ndimage.gaussian_filter(z, sigma, mode="nearest")
    ridge = np.tanh(rel / max(float(np.std(rel)), 1e-6))
    slope = np.radians(terrain.slope.astype(np.float64))
    # Northness: north-facing slopes are cooler and wetter in the northern hemisphere.
    north = np.cos(np.radians(terrain.aspect.astype(np.float64))) * np.sin(slope)
    cells = terrain.flow_accumulation / terrain.grid.resolution**2
    wet = np.clip(np.log10(cells) / 3.0, 0.0, 1.5)
    steep = (terrain.slope.astype(np.float64) - 25.0) / 20.0
    return _Environment(band, high, ridge, north, wet, steep)


def _class_scores(env: _Environment) -> dict[LandCover, np.ndarray]:
    """Log-odds-like environmental scores of the three hillslope classes."""
    return {
        LandCover.FOREST: (
            0.2
            + 1.2 * env.band
            + 2.0 * env.north
            + 1.2 * env.wet
            - 0.8 * env.ridge
            - 0.8 * env.steep
            - 1.0 * env.high
        ),
        LandCover.SHRUB_GRASS: 1.0 - 0.8 * env.north + 0.3 * env.ridge - 0.3 * env.wet,
        LandCover.BARE_ROCK: (
            -2.6
            + 2.4 * np.clip(env.steep, 0.0, None)
            + 1.5 * env.high
            + 0.8 * env.ridge
            - 1.0 * env.wet
        ),
    }


def _hillslope_cover(
    env: _Environment, shape: tuple[int, int], rng: np.random.Generator, resolution: float
) -> np.ndarray:
    """Arg-max of scores + correlated noise: patches whose odds follow the environment."""
    corr = max(PATCH_CORRELATION_M / resolution, 1.0)
    classes = list(_class_scores(env).items())
    stacked = np.stack(
        [score + 0.9 * gaussian_random_field(shape, corr, rng) for _, score in classes]
    )
    codes = np.array([int(c) for c, _ in classes], dtype=np.uint8)
    return codes[np.argmax(stacked, axis=0)]


def _channels(terrain: Terrain) -> tuple[np.ndarray, np.ndarray]:
    """(river_bed, water) masks from the largest D8 channels."""
    acc = terrain.flow_accumulation.astype(np.float64)
    amax = float(acc.max())
    bed_thr = min(RIVER_BED_AREA_M2, RIVER_BED_FRACTION_OF_MAX * amax)
    water_thr = min(WATER_AREA_M2, WATER_FRACTION_OF_MAX * amax)
    channel = acc >= bed_thr
    # Gravel bed width grows with sqrt(catchment area): dilate each channel cell by its
    # half-width via a distance transform from the channel, compared with the nearest width.
    half_width = RIVER_BED_HALF_WIDTH_M_PER_SQRT_KM2 * np.sqrt(acc / 1e6)
    dist, (ri, ci) = ndimage.distance_transform_edt(~channel, return_indices=True)
    river_bed = dist * terrain.grid.resolution <= half_width[ri, ci]
    water = acc >= water_thr  # a one-pixel D8 line in the main channel
    return river_bed, water


def _ndvi(
    cover: np.ndarray, env: _Environment, rng: np.random.Generator, resolution: float
) -> np.ndarray:
    """Per-class NDVI level + environment + medium and fine texture, clipped per class."""
    shape = cover.shape
    env_term = (
        0.10 * env.north
        + 0.06 * env.wet
        + 0.06 * env.band
        - 0.06 * env.steep
        - 0.05 * env.ridge
        - 0.08 * env.high
    )
    texture = 0.04 * gaussian_random_field(shape, max(60.0 / resolution, 1.0), rng)
    texture += 0.03 * gaussian_random_field(shape, 1.0, rng)  # canopy-gap scale speckle
    ndvi = np.zeros(shape)
    for code, level in NDVI_LEVEL.items():
        sel = cover == code
        lo, hi = NDVI_RANGE[code]
        gain = NDVI_ENV_GAIN[code]
        values = level + gain * env_term[sel] + (0.5 + 0.5 * gain) * texture[sel]
        ndvi[sel] = np.clip(values, lo, hi)
    return np.clip(ndvi, -1.0, 1.0).astype(np.float32)


def _water_content(
    cover: np.ndarray, ndvi: np.ndarray, rng: np.random.Generator, resolution: float
) -> np.ndarray:
    """Vegetation water content (kg/m^2) from class, NDVI and an independent structure field.

    Forest stores several times the water of shrubs at the same NDVI (woody biomass; NDVI
    saturates), and the structure field (stand age, density) varies it independently of NDVI.
    """
    structure = gaussian_random_field(
        cover.shape, max(STRUCTURE_CORRELATION_M / resolution, 1.0), rng
    )
    factor = np.exp(0.3 * structure)
    n = ndvi.astype(np.float64)
    forest = (1.6 + 2.6 * np.clip((n - 0.5) / 0.42, 0.0, 1.0)) * factor
    shrub = (0.2 + 0.8 * np.clip((n - 0.18) / 0.57, 0.0, 1.0)) * factor
    bare = 0.02 * np.clip(n / 0.2, 0.0, 1.0)
    wc = np.zeros(cover.shape)
    wc = np.where(cover == LandCover.FOREST, np.clip(forest, 1.3, 5.5), wc)
    wc = np.where(cover == LandCover.SHRUB_GRASS, np.clip(shrub, 0.15, 1.3), wc)
    wc = np.where((cover == LandCover.BARE_ROCK) | (cover == LandCover.RIVER_BED), bare, wc)
    return wc.astype(np.float32)


def simulate_vegetation(terrain: Terrain, rng: np.random.Generator) -> Vegetation:
    """Simulate pre-event land cover, NDVI and vegetation water content.

    Args:
        terrain: the scene's terrain (elevation, slope, aspect, flow accumulation).
        rng: the random generator (same state, same bytes).

    Returns:
        Vegetation with (H, W) uint8 land cover, float32 NDVI and float32 water content.
    """
    env = _environment(terrain)
    res = terrain.grid.resolution
    cover = _hillslope_cover(env, terrain.grid.shape, rng, res)
    river_bed, water = _channels(terrain)
    cover[river_bed] = LandCover.RIVER_BED
    cover[water] = LandCover.WATER
    ndvi = _ndvi(cover, env, rng, res)
    wc = _water_content(cover, ndvi, rng, res)
    return Vegetation(cover.astype(np.uint8), ndvi, wc)
