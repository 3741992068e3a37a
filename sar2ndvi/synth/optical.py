"""Sentinel-2 L2A twin: surface spectra, topographic illumination, clouds, SCL and DNs.

All arrays are (H, W) with row 0 at the north edge and columns increasing east, on the
scene's 10 m grid unless said otherwise. Reflectances are float32 bottom-of-atmosphere
reflectance (0..1), NaN for no data. The spectra and every parameter are described, with
references, in `docs/simulator-sensors.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.special import ndtr

from sar2ndvi.errors import InputError
from sar2ndvi.synth.fields import gaussian_random_field

__all__ = [
    "DARK_AREA_ILLUMINATION",
    "S2_BANDS",
    "SCL",
    "VEGETATION_NDVI_THRESHOLD",
    "S2Acquisition",
    "S2Band",
    "block_mean",
    "block_mode",
    "cloud_shadow_offset",
    "from_l2a_digital_numbers",
    "illumination_factor",
    "l2a_offset",
    "simulate_clouds",
    "simulate_s2_acquisition",
    "surface_reflectance",
    "to_l2a_digital_numbers",
]


class SCL(IntEnum):
    """Sen2Cor scene classification (the L2A `SCL` asset, 20 m)."""

    NO_DATA = 0
    SATURATED_DEFECTIVE = 1
    DARK_AREA_PIXELS = 2
    CLOUD_SHADOWS = 3
    VEGETATION = 4
    NOT_VEGETATED = 5
    WATER = 6
    UNCLASSIFIED = 7
    CLOUD_MEDIUM_PROBABILITY = 8
    CLOUD_HIGH_PROBABILITY = 9
    THIN_CIRRUS = 10
    SNOW = 11


@dataclass(frozen=True)
class S2Band:
    """One MSI band as described by the Planetary Computer `eo:bands` of its L2A asset.

    Attributes:
        name: asset key, e.g. "B04".
        common_name: STAC EO common name, None where the item gives none (B09).
        center_wavelength: micrometres.
        full_width_half_max: micrometres.
        resolution: native L2A pixel size, metres (10, 20 or 60).
    """

    name: str
    common_name: str | None
    center_wavelength: float
    full_width_half_max: float
    resolution: int


# Exactly the Planetary Computer sentinel-2-l2a item metadata (fixtures/stac), in its asset
# order. B10 (cirrus, 1.375 um) is a top-of-atmosphere band and is not in L2A products.
S2_BANDS: dict[str, S2Band] = {
    b.name: b
    for b in (
        S2Band("B01", "coastal", 0.443, 0.027, 60),
        S2Band("B02", "blue", 0.49, 0.098, 10),
        S2Band("B03", "green", 0.56, 0.045, 10),
        S2Band("B04", "red", 0.665, 0.038, 10),
        S2Band("B05", "rededge", 0.704, 0.019, 20),
        S2Band("B06", "rededge", 0.74, 0.018, 20),
        S2Band("B07", "rededge", 0.783, 0.028, 20),
        S2Band("B08", "nir", 0.842, 0.145, 10),
        S2Band("B09", None, 0.945, 0.026, 60),
        S2Band("B11", "swir16", 1.61, 0.143, 20),
        S2Band("B12", "swir22", 2.19, 0.242, 20),
        S2Band("B8A", "rededge", 0.865, 0.033, 20),
    )
}
_BAND_NAMES = tuple(S2_BANDS)
_RED = _BAND_NAMES.index("B04")
_NIR = _BAND_NAMES.index("B08")

# Land-cover codes, mirroring sar2ndvi.synth.vegetation.LandCover (not imported on purpose:
# the sensors take plain arrays).
_WATER, _RIVER_BED, _BARE_ROCK, _SHRUB_GRASS, _FOREST, _LANDSLIDE = 1, 2, 3, 4, 5, 6

# Endmember reflectance spectra at the band centres, in _BAND_NAMES order
# (B01 B02 B03 B04 B05 B06 B07 B08 B09 B11 B12 B8A). Typical library shapes (USGS splib07,
# ECOSTRESS/ASTER library) at Sentinel-2 band centres; see the docs for the sources.
_SPECTRA: dict[str, tuple[float, ...]] = {
    # Broadleaf evergreen canopy: chlorophyll red well, steep red edge, NIR plateau.
    "forest": (0.020, 0.025, 0.060, 0.028, 0.090, 0.250, 0.330, 0.360, 0.340, 0.170, 0.080, 0.370),
    # Grass/shrub canopy: brighter visible, slightly lower NIR, drier SWIR.
    "grass": (0.030, 0.035, 0.080, 0.045, 0.120, 0.260, 0.320, 0.340, 0.320, 0.220, 0.120, 0.350),
    # Moist brown forest soil / litter: rises slowly with wavelength, no red edge.
    "soil": (0.050, 0.065, 0.095, 0.140, 0.165, 0.185, 0.200, 0.220, 0.225, 0.290, 0.250, 0.230),
    # Weathered schist/marble outcrop: bright, flat, slight SWIR drop.
    "rock": (0.120, 0.140, 0.170, 0.200, 0.210, 0.220, 0.230, 0.240, 0.245, 0.280, 0.250, 0.245),
    # Braided river bed: grey gravel and sand, damp patches.
    "gravel": (0.100, 0.120, 0.150, 0.180, 0.190, 0.200, 0.210, 0.220, 0.225, 0.250, 0.220, 0.225),
    # Fresh landslide debris: freshly broken rock and soil, the brightest surface.
    "debris": (0.130, 0.160, 0.200, 0.240, 0.260, 0.270, 0.280, 0.290, 0.290, 0.330, 0.280, 0.295),
    # Turbid mountain river / lake: dark, NIR and SWIR absorbed.
    "water": (0.045, 0.055, 0.065, 0.045, 0.035, 0.022, 0.016, 0.012, 0.006, 0.003, 0.002, 0.010),
}

# (background, vegetation) endmembers per land-cover class; unknown classes get soil + grass.
_MIXTURES: dict[int, tuple[str, str]] = {
    _WATER: ("water", "grass"),
    _RIVER_BED: ("gravel", "grass"),
    _BARE_ROCK: ("rock", "grass"),
    _SHRUB_GRASS: ("soil", "grass"),
    _FOREST: ("soil", "forest"),
    _LANDSLIDE: ("debris", "grass"),
}
_DEFAULT_MIXTURE = ("soil", "grass")

#: SCL threshold: clear land pixels with NDVI above this are VEGETATION (4), else NOT_VEGETATED.
VEGETATION_NDVI_THRESHOLD = 0.3
#: SCL threshold: illumination factor below this is DARK_AREA_PIXELS (2), deep terrain shadow.
DARK_AREA_ILLUMINATION = 0.3
# Damping constant c of the C-correction-like illumination model (Teillet et al. 1982).
_C_CORRECTION = 0.4
_ILLUMINATION_RANGE = (0.2, 1.6)
# Relative standard deviation of the smooth, spectrally flat surface brightness texture, and
# of the per-pixel, per-band spectral noise.
_BRIGHTNESS_TEXTURE = 0.08
_SPECTRAL_NOISE = 0.01
# Per-acquisition, per-band gain error (atmospheric correction / calibration), relative.
_CALIBRATION_NOISE = 0.004
_CLOUD_CIRRUS_SHARE = 0.15  # share of the cloudy pixels that are thin cirrus (class 10)
_CLOUD_CORE_SHARE = 0.6  # share of the opaque cloud pixels that are thick cores (class 9)


def _vegetation_fraction(
    ndvi: np.ndarray, background: np.ndarray, vegetation: np.ndarray
) -> np.ndarray:
    """Vegetation cover fraction f whose linear mixture has the given NDVI.

    With d = nir - red and s = nir + red of each endmember, the mixture NDVI is
    (f dV + (1 - f) dB) / (f sV + (1 - f) sB); solving for f gives
    f = (dB - n sB) / ((dB - n sB) - (dV - n sV)), clipped to [0, 1].
    """
    dB = background[_NIR] - background[_RED]
    sB = background[_NIR] + background[_RED]
    dV = vegetation[_NIR] - vegetation[_RED]
    sV = vegetation[_NIR] + vegetation[_RED]
    num = dB - ndvi * sB
    den = num - (dV - ndvi * sV)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(den != 0, num / den, 0.0)
    return np.clip(f, 0.0, 1.0)


def _mixed_spectra(ndvi: np.ndarray, land_cover: np.ndarray) -> np.ndarray:
    """(bands, H, W) linear mixture of each pixel's background and vegetation endmembers."""
    out = np.empty((len(_BAND_NAMES), *ndvi.shape), dtype=np.float64)
    unknown = ~np.isin(land_cover, list(_MIXTURES))
    groups = [(unknown, _DEFAULT_MIXTURE)]
    groups += [(land_cover == code, names) for code, names in _MIXTURES.items()]
    for where, (bg_name, veg_name) in groups:
        if not where.any():
            continue
        bg = np.asarray(_SPECTRA[bg_name])
        veg = np.asarray(_SPECTRA[veg_name])
        f = _vegetation_fraction(ndvi[where], bg, veg)
        out[:, where] = f[None, :] * veg[:, None] + (1.0 - f[None, :]) * bg[:, None]
    return out


def surface_reflectance(
    ndvi: np.ndarray, land_cover: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Bottom-of-atmosphere surface reflectance for every L2A band, on a flat, sunlit surface.

    Each pixel is a linear mixture of a background spectrum chosen by land cover (soil,
    rock, gravel, fresh debris, water) and a vegetation spectrum (forest or grass), with the
    vegetation fraction solved so that the mixture has the input NDVI. A smooth, spectrally
    flat brightness texture and 1 % per-band noise are added; B04 and B08 are then re-split
    from their sum so that (B08 - B04) / (B08 + B04) equals the input NDVI exactly.

    Args:
        ndvi: (H, W) NDVI in [-1, 1]; NaN gives NaN in every band.
        land_cover: (H, W) integer land-cover codes (sar2ndvi.synth.vegetation.LandCover).
        rng: the random generator.

    Returns:
        {band name: (H, W) float32 reflectance in [0, 1]} for every band of S2_BANDS.
    """
    ndvi = np.asarray(ndvi, dtype=np.float64)
    land_cover = np.asarray(land_cover)
    if ndvi.ndim != 2 or ndvi.shape != land_cover.shape:
        raise InputError(
            f"ndvi and land_cover must be 2-D arrays of one shape, got {ndvi.shape} and "
            f"{land_cover.shape}"
        )
    valid = np.isfinite(ndvi)
    n = np.clip(np.where(valid, ndvi, 0.0), -1.0, 1.0)
    spectra = _mixed_spectra(n, land_cover)
    # Texture: grain size, moisture and canopy shading change brightness, not band ratios.
    texture = np.exp(_BRIGHTNESS_TEXTURE * gaussian_random_field(ndvi.shape, 3.0, rng))
    noise = 1.0 + _SPECTRAL_NOISE * rng.standard_normal(spectra.shape)
    spectra = np.clip(spectra * texture[None] * noise, 0.0, 1.0)
    # Re-split red and NIR from their (noisy) sum to reproduce the NDVI exactly: the sum is
    # <= 2 * 0.5 here, so both stay inside [0, 1].
    total = np.maximum(spectra[_RED] + spectra[_NIR], 1e-3)
    spectra[_NIR] = total * (1.0 + n) / 2.0
    spectra[_RED] = total * (1.0 - n) / 2.0
    spectra[:, ~valid] = np.nan
    return {name: spectra[i].astype(np.float32) for i, name in enumerate(_BAND_NAMES)}


def illumination_factor(
    slope: np.ndarray, aspect: np.ndarray, sun_zenith: float, sun_azimuth: float
) -> np.ndarray:
    """Topographic illumination relative to flat ground, a damped cos(i) / cos(sz) law.

    cos i = cos sz cos s + sin sz sin s cos(sun_azimuth - aspect) is the solar incidence on
    the facet; the factor (cos i + c) / (cos sz + c) with c = 0.4 is the inverse of the
    C-correction (Teillet et al. 1982), whose c stands for diffuse sky light. It is clipped
    to [0.2, 1.6] and multiplies all bands alike (NDVI-invariant): the simulated L2A keeps its
    topographic illumination, as L2A without a terrain (illumination) correction does.

    Args:
        slope: (H, W) degrees. aspect: (H, W) direction faced, degrees clockwise from north.
        sun_zenith, sun_azimuth: degrees (azimuth clockwise from north, towards the sun).

    Returns:
        (H, W) float32 factor; 1 on flat ground.
    """
    if not 0.0 <= sun_zenith < 90.0:
        raise InputError(f"sun_zenith must be in [0, 90) degrees, got {sun_zenith}")
    s = np.deg2rad(np.asarray(slope, dtype=np.float64))
    rel = np.deg2rad(sun_azimuth - np.asarray(aspect, dtype=np.float64))
    sz = np.deg2rad(sun_zenith)
    cos_i = np.cos(sz) * np.cos(s) + np.sin(sz) * np.sin(s) * np.cos(rel)
    factor = (cos_i + _C_CORRECTION) / (np.cos(sz) + _C_CORRECTION)
    return np.clip(factor, *_ILLUMINATION_RANGE).astype(np.float32)


def _top_share(field: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the `count` candidate pixels with the largest `field` values."""
    mask = np.zeros(field.shape, dtype=bool)
    idx = np.flatnonzero(candidates)
    count = int(min(max(count, 0), idx.size))
    if count == 0:
        return mask
    values = field.ravel()[idx]
    # argpartition picks exactly `count` pixels: the cloudy share is exact, not a quantile
    # estimate. Ties (none in practice for a continuous field) are broken by position.
    top = idx[np.argpartition(-values, count - 1)[:count]]
    mask.ravel()[top] = True
    return mask


def _shift(mask: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """Shift a bool mask by whole pixels (rows down, columns right), filling with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(drow) >= h or abs(dcol) >= w:
        return out
    src = mask[max(0, -drow) : h - max(0, drow), max(0, -dcol) : w - max(0, dcol)]
    out[max(0, drow) : h - max(0, -drow), max(0, dcol) : w - max(0, -dcol)] = src
    return out


def cloud_shadow_offset(
    resolution: float, sun_zenith: float, sun_azimuth: float, cloud_height_m: float
) -> tuple[int, int]:
    """(rows, columns) from a cloud to its shadow, rounded to whole pixels.

    The shadow lies cloud_height * tan(sun_zenith) metres from the cloud, away from the
    sun: towards azimuth sun_azimuth + 180. Rows grow southwards, columns eastwards.
    """
    distance = cloud_height_m * np.tan(np.deg2rad(sun_zenith)) / resolution
    az = np.deg2rad(sun_azimuth)
    return int(np.rint(distance * np.cos(az))), int(np.rint(-distance * np.sin(az)))


def simulate_clouds(
    shape: tuple[int, int],
    resolution: float,
    rng: np.random.Generator,
    cloud_fraction: float,
    sun_zenith: float,
    sun_azimuth: float,
    cloud_height_m: float = 1500.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulus-like clouds, a thin cirrus veil and the cloud shadows.

    Opaque clouds are the highest values of a Gaussian random field (correlation length
    drawn in 20-60 px); of those, the densest 60 % are thick cores (9), the rest margins
    (8). Thin cirrus (10) is the top of a second, smoother field outside the opaque clouds,
    15 % of the cloudy pixels. The share of cloudy pixels equals `cloud_fraction` to one
    pixel. Shadows are the opaque clouds shifted away from the sun by
    cloud_height * tan(sun_zenith) / resolution pixels, minus any cloud pixel (flat
    terrain, one cloud-base height).

    Args:
        shape: (H, W). resolution: metres per pixel. rng: the random generator.
        cloud_fraction: wanted share of cloudy (8, 9, 10) pixels, in [0, 1].
        sun_zenith, sun_azimuth: degrees. cloud_height_m: cloud-base height, metres.

    Returns:
        (cloud_class, shadow): (H, W) uint8 in {0, 8, 9, 10} (0 = clear) and (H, W) bool.
    """
    if not 0.0 <= cloud_fraction <= 1.0:
        raise InputError(f"cloud_fraction must be in [0, 1], got {cloud_fraction}")
    if resolution <= 0:
        raise InputError(f"resolution must be > 0 metres, got {resolution}")
    n_pixels = shape[0] * shape[1]
    n_cloudy = round(cloud_fraction * n_pixels)
    n_cirrus = round(_CLOUD_CIRRUS_SHARE * n_cloudy)
    n_opaque = n_cloudy - n_cirrus
    # Draw both fields every time so the stream does not depend on cloud_fraction.
    cumulus = gaussian_random_field(shape, rng.uniform(20.0, 60.0), rng)
    cirrus_field = gaussian_random_field(shape, rng.uniform(60.0, 120.0), rng)
    everywhere = np.ones(shape, dtype=bool)
    opaque = _top_share(cumulus, everywhere, n_opaque)
    core = _top_share(cumulus, opaque, round(_CLOUD_CORE_SHARE * n_opaque))
    cirrus = _top_share(cirrus_field, ~opaque, n_cirrus)
    cloud_class = np.zeros(shape, dtype=np.uint8)
    cloud_class[cirrus] = SCL.THIN_CIRRUS
    cloud_class[opaque] = SCL.CLOUD_MEDIUM_PROBABILITY
    cloud_class[core] = SCL.CLOUD_HIGH_PROBABILITY
    drow, dcol = cloud_shadow_offset(resolution, sun_zenith, sun_azimuth, cloud_height_m)
    shadow = _shift(opaque, drow, dcol) & (cloud_class == 0)
    return cloud_class, shadow


@dataclass(frozen=True)
class S2Acquisition:
    """One simulated Sentinel-2 L2A acquisition on the scene's 10 m grid.

    Attributes:
        reflectance: {band: (H, W) float32 BOA reflectance}, every band of S2_BANDS at 10 m,
            with illumination, clouds and cloud shadows applied; NaN = no data.
        scl: (H, W) uint8 SCL codes at 10 m (use block_mode for the 20 m product).
        cloud_cover: percent of pixels in classes 8, 9 and 10 (the STAC `eo:cloud_cover`).
    """

    reflectance: dict[str, np.ndarray]
    scl: np.ndarray
    cloud_cover: float


def _clear_scl(ndvi: np.ndarray, land_cover: np.ndarray, illumination: np.ndarray) -> np.ndarray:
    """SCL of cloud-free pixels from land cover, NDVI and terrain illumination."""
    scl = np.where(ndvi > VEGETATION_NDVI_THRESHOLD, SCL.VEGETATION, SCL.NOT_VEGETATED)
    scl = np.where(land_cover == _WATER, SCL.WATER, scl)
    scl = np.where(illumination < DARK_AREA_ILLUMINATION, SCL.DARK_AREA_PIXELS, scl)
    scl = np.where(np.isfinite(ndvi), scl, SCL.NO_DATA)
    return scl.astype(np.uint8)


def _apply_clouds(
    bands: np.ndarray,
    cloud_class: np.ndarray,
    shadow: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Cloud, cirrus and shadow radiometry on a (bands, H, W) reflectance stack."""
    # One smooth optical-thickness field in [0, 1] drives all cloud brightness.
    thickness = ndtr(gaussian_random_field(cloud_class.shape, 8.0, rng))
    shadow_factor = rng.uniform(0.2, 0.4)
    # Water and ice absorb in the SWIR: clouds are flat in VNIR, darker at 1.6 and 2.2 um.
    shape_factor = np.ones(len(_BAND_NAMES))
    shape_factor[_BAND_NAMES.index("B11")] = 0.8
    shape_factor[_BAND_NAMES.index("B12")] = 0.6
    cloud_top = (0.4 + 0.3 * thickness)[None] * shape_factor[:, None, None]
    core = cloud_class == SCL.CLOUD_HIGH_PROBABILITY
    margin = cloud_class == SCL.CLOUD_MEDIUM_PROBABILITY
    cirrus = cloud_class == SCL.THIN_CIRRUS
    alpha = (0.5 + 0.4 * thickness)[None]  # semi-transparent margins see some ground
    out = np.where(shadow[None], bands * shadow_factor, bands)
    out = np.where(core[None], cloud_top, out)
    out = np.where(margin[None], alpha * cloud_top + (1.0 - alpha) * bands, out)
    out = np.where(cirrus[None], bands + (0.02 + 0.06 * thickness)[None], out)
    return out


def simulate_s2_acquisition(
    ndvi: np.ndarray,
    land_cover: np.ndarray,
    slope: np.ndarray,
    aspect: np.ndarray,
    rng: np.random.Generator,
    *,
    resolution: float,
    cloud_fraction: float,
    sun_zenith: float,
    sun_azimuth: float,
) -> S2Acquisition:
    """Simulate one Sentinel-2 L2A acquisition: reflectance for every band and the SCL.

    Steps: surface_reflectance -> x illumination_factor -> per-band calibration gain
    (~0.4 %) -> clouds (thick 0.4-0.7, flat), semi-transparent margins, cirrus (+0.02-0.08)
    and cloud shadows (x 0.2-0.4) -> SCL: water 6, NDVI > 0.3 vegetation 4, else 5, deep
    terrain shadow 2, then cloud shadow 3 and clouds 8/9/10 override.

    Args:
        ndvi: (H, W) true surface NDVI; NaN = no data (SCL 0, NaN reflectance).
        land_cover: (H, W) integer land-cover codes (vegetation.LandCover values).
        slope, aspect: (H, W) degrees (aspect = direction faced, clockwise from north).
        rng: the random generator; the same state gives the same bytes.
        resolution: pixel size, metres. cloud_fraction: share of cloudy pixels in [0, 1].
        sun_zenith, sun_azimuth: degrees.

    Returns:
        An S2Acquisition.
    """
    ndvi = np.asarray(ndvi, dtype=np.float64)
    land_cover = np.asarray(land_cover)
    surface = surface_reflectance(ndvi, land_cover, rng)
    illumination = illumination_factor(slope, aspect, sun_zenith, sun_azimuth)
    gains = 1.0 + _CALIBRATION_NOISE * rng.standard_normal(len(_BAND_NAMES))
    bands = np.stack([surface[b] for b in _BAND_NAMES]).astype(np.float64)
    bands = bands * illumination[None] * gains[:, None, None]
    cloud_class, shadow = simulate_clouds(
        ndvi.shape, resolution, rng, cloud_fraction, sun_zenith, sun_azimuth
    )
    bands = np.clip(_apply_clouds(bands, cloud_class, shadow, rng), 0.0, 1.0)
    scl = _clear_scl(ndvi, land_cover, illumination)
    valid = scl != SCL.NO_DATA
    bands[:, ~valid] = np.nan  # no data stays no data, even under a cloud
    scl = np.where(shadow & valid, SCL.CLOUD_SHADOWS, scl)
    scl = np.where((cloud_class > 0) & valid, cloud_class, scl).astype(np.uint8)
    cloudy = np.isin(
        scl, (SCL.CLOUD_MEDIUM_PROBABILITY, SCL.CLOUD_HIGH_PROBABILITY, SCL.THIN_CIRRUS)
    )
    return S2Acquisition(
        reflectance={b: bands[i].astype(np.float32) for i, b in enumerate(_BAND_NAMES)},
        scl=scl,
        cloud_cover=float(100.0 * cloudy.mean()) if cloudy.size else 0.0,
    )


def _baseline_tuple(processing_baseline: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(processing_baseline).strip().split("."))
    except ValueError:
        raise InputError(
            f"processing_baseline must look like '04.00' or '05.10' (the STAC "
            f"s2:processing_baseline), got {processing_baseline!r}"
        ) from None


def l2a_offset(processing_baseline: str) -> int:
    """The L2A BOA_ADD_OFFSET in DN: 1000 from processing baseline 04.00 (25 Jan 2022), else 0.

    Baselines are compared as version numbers: "05.10" >= "04.00" > "03.01".
    """
    return 1000 if _baseline_tuple(processing_baseline) >= (4, 0) else 0


def to_l2a_digital_numbers(reflectance: np.ndarray, processing_baseline: str) -> np.ndarray:
    """Encode reflectance as L2A uint16 digital numbers.

    DN = round(reflectance * 10000) + offset (1000 for baseline >= 04.00, else 0), clipped
    to 1..65535 so that 0 stays the nodata value; NaN -> 0.

    Args:
        reflectance: array of BOA reflectance (any shape).
        processing_baseline: the product's `s2:processing_baseline`, e.g. "05.10".

    Returns:
        uint16 array of the same shape.
    """
    offset = l2a_offset(processing_baseline)
    r = np.asarray(reflectance, dtype=np.float64)
    valid = np.isfinite(r)
    dn = np.clip(np.rint(np.where(valid, r, 0.0) * 10000.0) + offset, 1, 65535)
    return np.where(valid, dn, 0).astype(np.uint16)


def from_l2a_digital_numbers(dn: np.ndarray, processing_baseline: str) -> np.ndarray:
    """Decode L2A digital numbers: (DN - offset) / 10000 as float32, DN 0 -> NaN."""
    offset = l2a_offset(processing_baseline)
    d = np.asarray(dn)
    refl = (d.astype(np.float64) - offset) / 10000.0
    return np.where(d == 0, np.nan, refl).astype(np.float32)


def _blocks(array: np.ndarray, factor: int, fill: float | int) -> np.ndarray:
    """(h, w, factor * factor) view of `array` padded at the bottom/right with `fill`."""
    if factor < 1 or int(factor) != factor:
        raise InputError(f"factor must be a positive integer, got {factor}")
    a = np.asarray(array)
    if a.ndim != 2:
        raise InputError(f"array must be 2-D (H, W), got shape {a.shape}")
    h, w = -(-a.shape[0] // factor), -(-a.shape[1] // factor)
    padded = np.pad(
        a, ((0, h * factor - a.shape[0]), (0, w * factor - a.shape[1])), constant_values=fill
    )
    return padded.reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h, w, -1)


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """NaN-aware mean over factor x factor blocks, for the 20 m and 60 m bands.

    Edge blocks (when H or W is not a multiple of factor) average only the pixels present;
    an all-NaN block gives NaN.

    Returns:
        (ceil(H / factor), ceil(W / factor)) float32.
    """
    blocks = _blocks(np.asarray(array, dtype=np.float64), factor, np.nan)
    valid = np.isfinite(blocks)
    count = valid.sum(axis=-1)
    total = np.where(valid, blocks, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def block_mode(array: np.ndarray, factor: int) -> np.ndarray:
    """Majority class per factor x factor block, for the 20 m SCL.

    Padding at the edges does not vote; ties go to the smallest class code (as
    scipy.stats.mode). Works for any non-negative integer codes.

    Returns:
        (ceil(H / factor), ceil(W / factor)) array of the input dtype.
    """
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"block_mode needs integer class codes, got dtype {a.dtype}")
    blocks = _blocks(a.astype(np.int64), factor, -1)
    classes = np.unique(a)
    # One vectorised count per class present (a dozen for SCL): counts (n_classes, h, w).
    counts = np.stack([(blocks == c).sum(axis=-1) for c in classes])
    return classes[np.argmax(counts, axis=0)].astype(a.dtype)
