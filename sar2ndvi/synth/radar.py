"""Sentinel-1 IW twin: terrain geometry, water cloud backscatter, speckle, RTC-like gamma0.

All arrays are (H, W) with row 0 at the north edge and columns increasing east. Angles are
in degrees; backscatter is linear power gamma0 (terrain-flattened, as in the Planetary
Computer `sentinel-1-rtc` collection), NaN for no data. The physics and every parameter
value are described, with references, in `docs/simulator-sensors.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sar2ndvi.errors import InputError
from sar2ndvi.geometry import (
    ASCENDING,
    DESCENDING,
    OrbitGeometry,
    layover_shadow,
    local_incidence_angle,
)

__all__ = [
    "ASCENDING",
    "DESCENDING",
    "LAYOVER_GAIN_DB",
    "LAYOVER_NOISE_DB",
    "REFERENCE_INCIDENCE",
    "VH_PARAMS",
    "VV_PARAMS",
    "OrbitGeometry",
    "S1Acquisition",
    "WaterCloudParams",
    "apply_speckle",
    "layover_shadow",
    "local_incidence_angle",
    "open_water_gamma0",
    "simulate_s1_acquisition",
    "water_cloud_gamma0",
]

#: Incidence angle (deg) at which the soil intercepts `C_db` are defined (IW mid-swath).
REFERENCE_INCIDENCE = 39.0
#: Mean brightening of active-layover pixels (dB): the foreshortened slope folded into one cell.
LAYOVER_GAIN_DB = 5.0
#: Standard deviation (dB) of the extra per-pixel log-normal disorder in layover.
LAYOVER_NOISE_DB = 2.0
# Local incidence is clipped below grazing before it enters the backscatter model: at
# >= 90 deg the facet cannot be seen (shadow, masked anyway) and 1/cos would blow up.
_MAX_MODEL_INCIDENCE = 89.0


@dataclass(frozen=True)
class WaterCloudParams:
    """Water cloud model parameters for one polarisation (see docs/simulator-sensors.md).

    Attributes:
        A: vegetation volume scattering, linear gamma0 per (kg/m^2)^E.
        B: canopy attenuation coefficient, m^2/kg (two-way loss exp(-2 B V / cos theta)).
        C_db: soil backscatter (gamma0, dB) of dry smooth soil at REFERENCE_INCIDENCE.
        D_db: soil moisture sensitivity, dB per m^3/m^3 of volumetric moisture.
        E: exponent of V in the volume term A V^E (1 gives the plain linear-V form; < 1
            makes the canopy term rise steeply for sparse vegetation and level off for
            dense forest, as C-band backscatter does).
        incidence_db_per_deg: soil backscatter change with local incidence, dB per degree.
        water_db: gamma0 (dB) of open, calm water (specular).
    """

    A: float
    B: float
    C_db: float
    D_db: float
    E: float = 1.0
    incidence_db_per_deg: float = -0.15
    water_db: float = -20.0


VV_PARAMS = WaterCloudParams(
    A=0.093, B=0.37, C_db=-16.6, D_db=16.0, E=0.51, incidence_db_per_deg=-0.15, water_db=-20.0
)
VH_PARAMS = WaterCloudParams(
    A=0.028, B=0.23, C_db=-26.0, D_db=20.0, E=0.44, incidence_db_per_deg=-0.10, water_db=-27.0
)


def _db_to_linear(db: np.ndarray | float) -> np.ndarray:
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 10.0)


def water_cloud_gamma0(
    water_content: np.ndarray,
    soil_moisture: np.ndarray,
    local_incidence: np.ndarray,
    params: WaterCloudParams,
    roughness_db: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Noise-free, terrain-flattened gamma0 from the water cloud model.

    sigma0 = A V^E cos(t) (1 - g2) + g2 sigma0_soil with g2 = exp(-2 B V / cos t) (Attema &
    Ulaby 1978; E = 1 is the plain linear-V form); gamma0 = sigma0 / cos t, so
    gamma0 = A V^E (1 - g2) + g2 * gamma0_soil, with the soil in dB linear in moisture:
    gamma0_soil[dB] = C + D mv + roughness + incidence_db_per_deg (t - REFERENCE_INCIDENCE).

    Args:
        water_content: (H, W) vegetation water content V, kg/m^2 (>= 0).
        soil_moisture: (H, W) volumetric soil moisture mv, m^3/m^3.
        local_incidence: (H, W) local incidence t, degrees (clipped to [0, 89]).
        params: the polarisation's parameters.
        roughness_db: extra soil backscatter, dB (scalar or (H, W)); e.g. positive over
            fresh, blocky landslide debris.

    Returns:
        (H, W) float32 linear gamma0.
    """
    V = np.maximum(np.asarray(water_content, dtype=np.float64), 0.0)
    mv = np.asarray(soil_moisture, dtype=np.float64)
    theta = np.clip(np.asarray(local_incidence, dtype=np.float64), 0.0, _MAX_MODEL_INCIDENCE)
    cos_t = np.cos(np.deg2rad(theta))
    soil_db = (
        params.C_db
        + params.D_db * mv
        + np.asarray(roughness_db, dtype=np.float64)
        + params.incidence_db_per_deg * (theta - REFERENCE_INCIDENCE)
    )
    g2 = np.exp(-2.0 * params.B * V / cos_t)
    gamma0 = params.A * np.power(V, params.E) * (1.0 - g2) + g2 * _db_to_linear(soil_db)
    return gamma0.astype(np.float32)


def open_water_gamma0(shape: tuple[int, int], params: WaterCloudParams) -> np.ndarray:
    """Specular open water: almost all energy reflected away, a constant dark gamma0.

    Returns:
        float32 array of `shape` at `params.water_db` (VV -20 dB, VH -27 dB), linear.
    """
    return np.full(shape, _db_to_linear(params.water_db), dtype=np.float32)


def apply_speckle(gamma0: np.ndarray, enl: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative, fully developed speckle of a multi-looked intensity image.

    The intensity of an L-look image of a homogeneous area is gamma distributed with shape L
    and mean equal to the true backscatter (Goodman 1976; Lee & Pottier 2009), so the image
    is gamma0 * n with n ~ Gamma(shape=L, scale=1/L): mean 1, variance 1/L.

    Args:
        gamma0: (H, W) linear backscatter; NaN stays NaN.
        enl: equivalent number of looks L (> 0); 4.4 for Sentinel-1 IW GRDH.
        rng: the random generator (one full-size draw, whatever the NaN pattern).

    Returns:
        (H, W) float32 speckled intensity.
    """
    if not enl > 0:
        raise InputError(f"enl (equivalent number of looks) must be > 0, got {enl}")
    g = np.asarray(gamma0)
    noise = rng.gamma(shape=enl, scale=1.0 / enl, size=g.shape)
    return (g.astype(np.float64) * noise).astype(np.float32)


@dataclass(frozen=True)
class S1Acquisition:
    """One simulated Sentinel-1 RTC acquisition on the scene grid.

    Attributes:
        vv: (H, W) float32 linear gamma0 VV, NaN = no data.
        vh: (H, W) float32 linear gamma0 VH, NaN = no data.
        layover: (H, W) bool active layover.
        shadow: (H, W) bool radar shadow (NaN in vv/vh).
        local_incidence: (H, W) float32 local incidence angle, degrees.
    """

    vv: np.ndarray
    vh: np.ndarray
    layover: np.ndarray
    shadow: np.ndarray
    local_incidence: np.ndarray


def _check_shapes(**arrays: np.ndarray) -> tuple[int, int]:
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise InputError(f"all inputs must be 2-D arrays of one shape (H, W); got {shapes}")
    return first


def simulate_s1_acquisition(
    elevation: np.ndarray,
    slope: np.ndarray,
    aspect: np.ndarray,
    resolution: float,
    water_content: np.ndarray,
    soil_moisture: np.ndarray,
    water_mask: np.ndarray,
    geometry: OrbitGeometry,
    rng: np.random.Generator,
    *,
    enl: float = 4.4,
    roughness_db: np.ndarray | float = 0.0,
    isolated_nodata_fraction: float = 5e-4,
) -> S1Acquisition:
    """Simulate one dual-pol (VV + VH) RTC gamma0 acquisition.

    Steps: local incidence -> water cloud gamma0 (open water where `water_mask`) -> layover
    distortion (brightened by LAYOVER_GAIN_DB with LAYOVER_NOISE_DB log-normal disorder) ->
    speckle (Gamma, `enl` looks) -> shadow set to NaN (masked, as in RTC products) ->
    isolated no-data pixels (NaN in both polarisations) at `isolated_nodata_fraction`.

    Args:
        elevation: (H, W) metres. slope, aspect: (H, W) degrees (aspect = direction faced).
        resolution: pixel size, metres.
        water_content: (H, W) vegetation water content, kg/m^2.
        soil_moisture: (H, W) volumetric soil moisture, m^3/m^3.
        water_mask: (H, W) bool, open water (river, lake, sea).
        geometry: the orbit.
        rng: the random generator; the same state gives the same bytes.
        enl: equivalent number of looks of the speckle.
        roughness_db: extra soil backscatter in dB, scalar or (H, W).
        isolated_nodata_fraction: probability of a pixel being a random no-data pixel.

    Returns:
        An S1Acquisition with float32 vv/vh and bool masks.
    """
    shape = _check_shapes(
        elevation=elevation,
        slope=slope,
        aspect=aspect,
        water_content=water_content,
        soil_moisture=soil_moisture,
        water_mask=water_mask,
    )
    if not 0.0 <= isolated_nodata_fraction <= 1.0:
        raise InputError(
            f"isolated_nodata_fraction must be in [0, 1], got {isolated_nodata_fraction}"
        )
    theta = local_incidence_angle(slope, aspect, geometry)
    layover, shadow = layover_shadow(elevation, resolution, geometry, slope, aspect)
    water = np.asarray(water_mask, dtype=bool)
    # Draw every random array at full size in a fixed order, so masks never shift the stream.
    layover_noise = rng.standard_normal((2, *shape))
    channels = []
    for k, params in enumerate((VV_PARAMS, VH_PARAMS)):
        clean = water_cloud_gamma0(water_content, soil_moisture, theta, params, roughness_db)
        clean = np.where(water, open_water_gamma0(shape, params), clean).astype(np.float64)
        # Layover folds the energy of a long stretch of slope into one cell: brighter and
        # disordered (the cell mixes surfaces), so it no longer tells the local cover.
        gain_db = LAYOVER_GAIN_DB + LAYOVER_NOISE_DB * layover_noise[k]
        clean = np.where(layover, clean * _db_to_linear(gain_db), clean)
        channels.append(apply_speckle(clean, enl, rng))
    nodata = shadow | (rng.random(shape) < isolated_nodata_fraction)
    vv, vh = (np.where(nodata, np.float32(np.nan), c).astype(np.float32) for c in channels)
    return S1Acquisition(vv=vv, vh=vh, layover=layover, shadow=shadow, local_incidence=theta)
