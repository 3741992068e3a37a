"""When the satellites pass: the acquisition plan of a simulated scene.

Sentinel-1A repeats each relative orbit every 12 days; over southern California the
ascending pass comes at about 01:50 UTC (local evening) and the descending one at
about 13:55 UTC (local morning). Sentinel-2A and -2B together revisit every 5 days at
about 18:40 UTC (10:30 local solar time, descending node).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from math import cos, degrees, radians, sin

import numpy as np

from sar2ndvi.synth.config import SceneConfig

S1_PASS_TIME = {
    "ascending": timedelta(hours=1, minutes=50, seconds=14),
    "descending": timedelta(hours=13, minutes=55, seconds=41),
}
S2_PASS_TIME = timedelta(hours=18, minutes=39, seconds=19)


@dataclass(frozen=True)
class Acquisition:
    """One satellite overpass.

    Attributes:
        sensor: "s1" or "s2".
        start: acquisition start, naive UTC.
        period: "pre" or "post" (relative to the event).
        orbit_state: "ascending" or "descending".
        platform: e.g. "SENTINEL-1A" or "Sentinel-2B" (spelled as in the real STAC items).
        index: position in the time-ordered list of this sensor's acquisitions.
    """

    sensor: str
    start: datetime
    period: str
    orbit_state: str
    platform: str
    index: int


def _passes(first: datetime, last: datetime, phase: datetime, step_days: int) -> list[datetime]:
    """All times phase + k*step that fall in [first, last]."""
    step = timedelta(days=step_days)
    k0 = -((phase - first) // step)  # ceil((first - phase) / step)
    out = []
    t = phase + k0 * step
    while t <= last:
        out.append(t)
        t += step
    return out


def plan(config: SceneConfig, rng: np.random.Generator) -> list[Acquisition]:
    """Every S1 and S2 acquisition in the pre- and post-event windows, time-ordered per sensor.

    The phase of each orbit's repeat cycle is drawn from `rng`, so different seeds give
    different calendars; the event itself always falls between two acquisitions.
    """
    event = config.event_datetime
    first = event - timedelta(days=config.pre_days)
    last = event + timedelta(days=config.post_days)
    acquisitions: list[Acquisition] = []
    for orbit_state, pass_time in S1_PASS_TIME.items():
        phase_day = int(rng.integers(0, config.s1_repeat_days))
        phase = event + timedelta(days=phase_day) + pass_time
        for t in _passes(first, last, phase, config.s1_repeat_days):
            acquisitions.append(
                Acquisition("s1", t, _period(t, event), orbit_state, "SENTINEL-1A", 0)
            )
    s2_phase = event + timedelta(days=int(rng.integers(0, config.s2_revisit_days))) + S2_PASS_TIME
    for k, t in enumerate(_passes(first, last, s2_phase, config.s2_revisit_days)):
        platform = "Sentinel-2A" if k % 2 == 0 else "Sentinel-2B"
        acquisitions.append(Acquisition("s2", t, _period(t, event), "descending", platform, 0))
    acquisitions.sort(key=lambda a: (a.sensor, a.start))
    counters: dict[str, int] = {}
    indexed = []
    for a in acquisitions:
        i = counters.get(a.sensor, 0)
        counters[a.sensor] = i + 1
        indexed.append(Acquisition(a.sensor, a.start, a.period, a.orbit_state, a.platform, i))
    return indexed


def _period(t: datetime, event: datetime) -> str:
    return "pre" if t < event else "post"


def solar_position(when: datetime, lon: float, lat: float) -> tuple[float, float]:
    """Approximate sun (zenith, azimuth) in degrees at a place and UTC time.

    The standard declination / equation-of-time approximation (NOAA), good to about a
    degree, which is all the cloud-shadow and illumination model needs.
    Azimuth is clockwise from north.
    """
    day = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60 + when.second / 3600
    gamma = 2 * np.pi / 365 * (day - 1 + (hour - 12) / 24)
    decl = (
        0.006918
        - 0.399912 * cos(gamma)
        + 0.070257 * sin(gamma)
        - 0.006758 * cos(2 * gamma)
        + 0.000907 * sin(2 * gamma)
    )
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * cos(gamma)
        - 0.032077 * sin(gamma)
        - 0.014615 * cos(2 * gamma)
        - 0.040849 * sin(2 * gamma)
    )
    true_solar_minutes = hour * 60 + eqtime + 4 * lon
    hour_angle = radians(true_solar_minutes / 4 - 180)
    phi = radians(lat)
    cos_zenith = sin(phi) * sin(decl) + cos(phi) * cos(decl) * cos(hour_angle)
    zenith = np.arccos(np.clip(cos_zenith, -1, 1))
    sin_az = -sin(hour_angle) * cos(decl) / max(sin(zenith), 1e-9)
    cos_az = (sin(decl) - sin(phi) * cos(zenith)) / max(cos(phi) * sin(zenith), 1e-9)
    azimuth = degrees(np.arctan2(sin_az, cos_az)) % 360
    return float(degrees(zenith)), float(azimuth)


__all__ = ["Acquisition", "plan", "solar_position"]
