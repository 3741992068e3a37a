"""Volumetric soil moisture per acquisition: static topographic wetness + rain + anomalies.

Radar backscatter responds to soil moisture; NDVI does not. The static pattern follows the
topographic wetness index TWI = ln(a / tan(beta)) (Beven & Kirkby 1979), with a the specific
catchment area (m) from D8 flow accumulation. Each acquisition adds a scene-wide level (rain
history) and an independent spatially correlated anomaly (storm cells, infiltration).
"""

from __future__ import annotations

import numpy as np

from sar2ndvi.errors import InputError
from sar2ndvi.synth.fields import gaussian_random_field
from sar2ndvi.synth.terrain import Terrain

__all__ = ["soil_moisture", "topographic_wetness_index"]

#: Physical range of volumetric soil moisture (m^3/m^3): residual .. saturation.
MOISTURE_RANGE = (0.02, 0.50)
#: Scene-wide level per acquisition when not given: uniform in this range (dry .. after rain).
LEVEL_RANGE = (0.08, 0.35)
#: Relative wetness contrast per TWI standard deviation (wetter valleys, drier ridges).
TWI_GAIN = 0.25
#: Anomaly standard deviation (m^3/m^3) and correlation length range (pixels).
ANOMALY_STD = 0.03
ANOMALY_CORRELATION_PX = (30.0, 80.0)
#: tan(beta) floor, so flat cells get a large but finite TWI.
MIN_TAN_SLOPE = 1e-3


def topographic_wetness_index(terrain: Terrain) -> np.ndarray:
    """(H, W) float64 TWI = ln(a / tan(beta)); a = flow_accumulation / resolution (m)."""
    a = terrain.flow_accumulation.astype(np.float64) / terrain.grid.resolution
    tan_b = np.maximum(np.tan(np.radians(terrain.slope.astype(np.float64))), MIN_TAN_SLOPE)
    return np.log(a / tan_b)


def _levels(n: int, mean_levels: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if mean_levels is None:
        return rng.uniform(*LEVEL_RANGE, size=n)
    levels = np.asarray(mean_levels, dtype=np.float64)
    if levels.shape != (n,):
        raise InputError(
            f"mean_levels must have shape ({n},) (one per acquisition), got {levels.shape}"
        )
    lo, hi = MOISTURE_RANGE
    if not np.all((levels >= lo) & (levels <= hi)):
        raise InputError(f"mean_levels must lie in [{lo}, {hi}] m^3/m^3, got {levels}")
    return levels


def soil_moisture(
    terrain: Terrain,
    rng: np.random.Generator,
    n: int,
    mean_levels: np.ndarray | None = None,
) -> np.ndarray:
    """Simulate `n` acquisitions of volumetric soil moisture.

    moisture_t = level_t * (1 + TWI_GAIN * twi_z) + anomaly_t, clipped to [0.02, 0.50], where
    twi_z is the standardised TWI (clipped to +-2.5 sd) and anomaly_t a Gaussian random field
    (std 0.03, correlation length drawn in 30..80 px). The wetness contrast scales with the
    level: wet scenes show valleys much wetter than ridges, dry scenes barely.

    Args:
        terrain: the scene's terrain.
        rng: the random generator (same state, same bytes).
        n: number of acquisitions (>= 1).
        mean_levels: optional (n,) scene-wide levels in m^3/m^3; drawn uniform in 0.08..0.35
            when None.

    Returns:
        (n, H, W) float32 volumetric soil moisture in m^3/m^3.
    """
    if int(n) < 1:
        raise InputError(f"n (number of acquisitions) must be >= 1, got {n}")
    n = int(n)
    levels = _levels(n, mean_levels, rng)
    twi = topographic_wetness_index(terrain)
    twi_z = np.clip((twi - twi.mean()) / max(float(twi.std()), 1e-9), -2.5, 2.5)
    shape = terrain.grid.shape
    out = np.empty((n, *shape), dtype=np.float32)
    for t in range(n):  # per acquisition, each a whole-array operation
        corr = rng.uniform(*ANOMALY_CORRELATION_PX)
        anomaly = ANOMALY_STD * gaussian_random_field(shape, corr, rng)
        out[t] = np.clip(levels[t] * (1.0 + TWI_GAIN * twi_z) + anomaly, *MOISTURE_RANGE)
    return out
