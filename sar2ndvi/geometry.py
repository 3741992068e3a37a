"""Terrain and SAR viewing geometry on a map grid: slope, aspect, local incidence,
layover and shadow.

Shared by the feature stage (which encodes the terrain and flags where radar is
unreliable) and the scene simulator (which uses the same geometry to make its radar).
All arrays are (H, W) with row 0 at the north edge and columns increasing east; angles
are in degrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from sar2ndvi.errors import InputError

#: Slopes below this (degrees) count as flat: their aspect is 0 (GDAL convention).
FLAT_SLOPE_DEG = 1e-6


def horn_slope_aspect(elevation: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect by Horn's (1981) 3x3 weighted differences.

    Args:
        elevation: (H, W) metres, row 0 north.
        resolution: pixel size in metres (> 0).

    Returns:
        (slope, aspect), both (H, W) float32 degrees. Slope in [0, 90); aspect clockwise from
        north of the direction the slope faces (downslope), in [0, 360), 0 where flat. Edges
        replicate the outer row/column, so there is no NaN.
    """
    if resolution <= 0:
        raise InputError(f"resolution must be > 0 metres, got {resolution}")
    z = np.asarray(elevation, dtype=np.float64)
    # The Sobel kernel is exactly Horn's: a [-1, 0, 1] difference smoothed by [1, 2, 1].
    dz_east = ndimage.sobel(z, axis=1, mode="nearest") / (8.0 * resolution)
    dz_north = -ndimage.sobel(z, axis=0, mode="nearest") / (8.0 * resolution)  # rows go south
    slope = np.degrees(np.arctan(np.hypot(dz_east, dz_north)))
    # Downslope direction is -grad; compass bearing = atan2(east, north).
    aspect = np.degrees(np.arctan2(-dz_east, -dz_north)) % 360.0
    aspect[slope < FLAT_SLOPE_DEG] = 0.0
    slope32 = np.minimum(slope, 90.0).astype(np.float32)
    slope32 = np.minimum(slope32, np.nextafter(np.float32(90.0), np.float32(0.0)))
    aspect32 = aspect.astype(np.float32)
    aspect32[aspect32 >= 360.0] = 0.0  # float32 rounding of 359.99999...
    return slope32, aspect32


@dataclass(frozen=True)
class OrbitGeometry:
    """A Sentinel-1 relative orbit seen from the scene.

    Attributes:
        orbit_state: "ascending" or "descending" (the STAC `sat:orbit_state`).
        heading: ground-track heading, degrees clockwise from north (ascending ~348,
            descending ~192 at low latitudes).
        incidence: ellipsoid incidence angle at scene centre, degrees (~39 mid-swath IW).
        relative_orbit: the STAC `sat:relative_orbit`.
    """

    orbit_state: Literal["ascending", "descending"]
    heading: float
    incidence: float
    relative_orbit: int

    @property
    def look_azimuth(self) -> float:
        """Horizontal look direction (sensor -> ground), deg clockwise from north.

        Sentinel-1 is right-looking, so the look direction is the heading + 90 deg:
        ascending passes look roughly east, descending passes roughly west.
        """
        return float((self.heading + 90.0) % 360.0)


ASCENDING = OrbitGeometry("ascending", 348.0, 39.0, 64)
DESCENDING = OrbitGeometry("descending", 192.0, 39.0, 71)


def _range_slope_tangent(slope: np.ndarray, aspect: np.ndarray, look_azimuth: float) -> np.ndarray:
    """tan of the slope in the plane of incidence, positive when rising away from the sensor.

    Elevation changes by -tan(slope) * cos(aspect - d) per metre in horizontal direction d
    (aspect is the downhill direction), so along the look direction the rise is
    -tan(slope) * cos(aspect - look): positive for slopes facing the sensor.
    """
    s = np.deg2rad(np.asarray(slope, dtype=np.float64))
    rel = np.deg2rad(np.asarray(aspect, dtype=np.float64) - look_azimuth)
    return -np.tan(s) * np.cos(rel)


def local_incidence_angle(
    slope: np.ndarray, aspect: np.ndarray, geometry: OrbitGeometry
) -> np.ndarray:
    """Angle between the surface normal and the direction to the sensor.

    With the normal n = (sin s sin a, sin s cos a, cos s) in (east, north, up) and the unit
    vector to the sensor u = (-sin t sin L, -sin t cos L, cos t) (t incidence, L look
    azimuth), cos(theta_loc) = n.u = cos s cos t - sin s sin t cos(a - L).

    Args:
        slope: (H, W) terrain slope, degrees from horizontal.
        aspect: (H, W) direction the slope faces, degrees clockwise from north.
        geometry: the orbit (its incidence and look azimuth).

    Returns:
        (H, W) float32 local incidence in degrees, in [0, 180): `incidence` on flat ground,
        |incidence - slope| on a slope facing the sensor, incidence + slope facing away.
    """
    s = np.deg2rad(np.asarray(slope, dtype=np.float64))
    rel = np.deg2rad(np.asarray(aspect, dtype=np.float64) - geometry.look_azimuth)
    t = np.deg2rad(geometry.incidence)
    cos_loc = np.cos(s) * np.cos(t) - np.sin(s) * np.sin(t) * np.cos(rel)
    angle = np.rad2deg(np.arccos(np.clip(cos_loc, -1.0, 1.0)))
    # float32 rounding could turn 179.99999 into 180.0; keep the documented half-open range.
    return np.minimum(angle, np.nextafter(np.float32(180.0), np.float32(0.0))).astype(np.float32)


def shadow_sweep_height(
    elevation: np.ndarray, resolution: float, geometry: OrbitGeometry, range_index: np.ndarray
) -> np.ndarray:
    """The height w = z + i * drop that cast-shadow tracing compares along a range line.

    A ray from the sensor descends at the depression angle (90 - incidence), i.e. by
    resolution / tan(incidence) metres per pixel. Pixel j is hidden when some pixel k nearer
    the sensor has z_k - (i_j - i_k) * drop > z_j, i.e. when w_j = z_j + i_j * drop is below
    the running maximum of w over the pixels nearer the sensor.

    Args:
        elevation: (H, W) metres.
        resolution: pixel size, metres.
        geometry: the orbit (its incidence).
        range_index: (W,) or (H, W) distance from the sensor-side scene edge, in pixels
            (the column for ascending passes, W - 1 - column for descending ones).

    Returns:
        (H, W) float64 metres.
    """
    drop = resolution / np.tan(np.deg2rad(geometry.incidence))
    return np.asarray(elevation, dtype=np.float64) + drop * np.asarray(range_index, np.float64)


def cast_shadow(sweep: np.ndarray, horizon: np.ndarray) -> np.ndarray:
    """Cast shadow from the sweep height and its running maximum from the sensor side.

    `horizon` includes the pixel itself, so it exceeds `sweep` exactly where an earlier
    pixel is higher. A relative tolerance keeps flat or uniformly sloping ground from
    flickering into shadow; it depends on the pixel only, so a chunked sweep decides
    exactly as a whole-row one.
    """
    return horizon > sweep + 1e-9 * np.maximum(1.0, np.abs(sweep))


def _ray_traced_shadow(
    elevation: np.ndarray, resolution: float, geometry: OrbitGeometry
) -> np.ndarray:
    """Cast shadow along grid rows, the sensor west (ascending) or east (descending)."""
    width = np.shape(elevation)[1]
    index = np.arange(width, dtype=np.float64)
    descending = geometry.orbit_state == "descending"
    w = shadow_sweep_height(elevation, resolution, geometry, index[::-1] if descending else index)
    if descending:  # sweep from the sensor side: east to west
        horizon = np.maximum.accumulate(w[:, ::-1], axis=1)[:, ::-1]
    else:
        horizon = np.maximum.accumulate(w, axis=1)
    return cast_shadow(w, horizon)


def facing_masks(
    slope: np.ndarray, aspect: np.ndarray, geometry: OrbitGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (layover, self-shadow) masks from the slope facing or turning from the sensor.

    Layover where the rise towards the sensor is steeper than the incidence; self-shadow
    where the back-slope is steeper than the depression angle (90 - incidence).
    """
    rise = _range_slope_tangent(slope, aspect, geometry.look_azimuth)
    t = np.deg2rad(geometry.incidence)
    return rise > np.tan(t), -rise > np.tan(np.pi / 2 - t)


def layover_shadow(
    elevation: np.ndarray,
    resolution: float,
    geometry: OrbitGeometry,
    slope: np.ndarray,
    aspect: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Active layover and radar shadow masks.

    Layover: the terrain rises towards the sensor faster than the wavefront, i.e. the slope
    component in the plane of incidence, facing the sensor, is steeper than the incidence.

    Shadow: the union of (a) self-shadowed back-slopes, whose slope component facing away
    from the sensor is steeper than the depression angle (90 - incidence), and (b) cast
    shadow, ray-traced along range lines. Range lines are approximated by grid rows, with the
    sensor due west for ascending and due east for descending passes; the true look azimuth
    of Sentinel-1 is 10-15 deg off east/west, which shifts cast shadows by at most a fraction
    of their length sideways. The self-shadow test (a) uses the true look azimuth.

    Args:
        elevation: (H, W) terrain height, metres.
        resolution: pixel size, metres.
        geometry: the orbit.
        slope: (H, W) slope, degrees.
        aspect: (H, W) aspect (direction faced), degrees clockwise from north.

    Returns:
        (layover, shadow): two (H, W) bool arrays.
    """
    if resolution <= 0:
        raise InputError(f"resolution must be > 0 metres, got {resolution}")
    layover, self_shadow = facing_masks(slope, aspect, geometry)
    shadow = self_shadow | _ray_traced_shadow(elevation, resolution, geometry)
    return layover, shadow
