import itertools
from datetime import datetime, timedelta

import numpy as np
import pytest

from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.schedule import plan, solar_position


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_plan_has_several_scenes_per_orbit_and_period(seed):
    config = SceneConfig()
    acqs = plan(config, np.random.default_rng(seed))
    event = config.event_datetime
    for period in ("pre", "post"):
        for orbit in ("ascending", "descending"):
            s1 = [
                a
                for a in acqs
                if a.sensor == "s1" and a.period == period and a.orbit_state == orbit
            ]
            assert len(s1) == config.pre_days // config.s1_repeat_days
            gaps = {b.start - a.start for a, b in itertools.pairwise(s1)}
            assert gaps <= {timedelta(days=12)}
        s2 = [a for a in acqs if a.sensor == "s2" and a.period == period]
        assert len(s2) >= 7
    for a in acqs:
        assert (a.start < event) == (a.period == "pre")
        assert event - timedelta(days=36) <= a.start <= event + timedelta(days=36)
    for sensor in ("s1", "s2"):
        assert [a.index for a in acqs if a.sensor == sensor] == list(
            range(sum(a.sensor == sensor for a in acqs))
        )


def test_plan_is_deterministic():
    config = SceneConfig()
    assert plan(config, np.random.default_rng(5)) == plan(config, np.random.default_rng(5))


@pytest.mark.parametrize("lat", [0.0, 20.0, 34.3, 50.0])
def test_sun_at_equinox_noon_stands_at_the_latitude(lat):
    # Around the March equinox at local solar noon the zenith angle equals the latitude,
    # and the sun is due south (azimuth 180) north of the equator.
    when = datetime(2024, 3, 20, 12, 7)  # 12:00 plus the equation of time (~7 min)
    zenith, azimuth = solar_position(when, 0.0, lat)
    assert zenith == pytest.approx(lat, abs=0.8)
    if lat > 5:
        assert azimuth == pytest.approx(180.0, abs=2.0)


def test_sun_is_in_the_south_east_in_the_morning():
    # 18:39 UTC over southern California is about 10:45 local solar time.
    zenith, azimuth = solar_position(datetime(2024, 4, 1, 18, 39), -118.2, 34.3)
    assert 25 < zenith < 45
    assert 110 < azimuth < 170
