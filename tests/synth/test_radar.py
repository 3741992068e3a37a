"""Tests of the Sentinel-1 twin: geometry, water cloud backscatter, speckle, acquisition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sar2ndvi.errors import InputError
from sar2ndvi.synth.radar import (
    ASCENDING,
    DESCENDING,
    VH_PARAMS,
    VV_PARAMS,
    OrbitGeometry,
    apply_speckle,
    layover_shadow,
    local_incidence_angle,
    open_water_gamma0,
    simulate_s1_acquisition,
    water_cloud_gamma0,
)

RES = 10.0


def db(x: np.ndarray | float) -> np.ndarray:
    return 10.0 * np.log10(x)


def full(value: float, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    return np.full(shape, value, dtype=np.float64)


def plane(shape: tuple[int, int], slope: float, aspect: float) -> np.ndarray:
    """Elevation (m) of a plane with the given slope and aspect (direction faced) on RES pixels."""
    rows, cols = np.indices(shape, dtype=np.float64)
    east, north = cols * RES, -rows * RES
    a = np.deg2rad(aspect)
    # Downhill towards the aspect: z falls along (sin a, cos a).
    return -np.tan(np.deg2rad(slope)) * (east * np.sin(a) + north * np.cos(a))


def slope_aspect(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and aspect (deg, GDAL convention) by central differences; test helper only."""
    dz_drow, dz_dcol = np.gradient(z, RES)
    dz_de, dz_dn = dz_dcol, -dz_drow
    slope = np.rad2deg(np.arctan(np.hypot(dz_de, dz_dn)))
    aspect = np.rad2deg(np.arctan2(-dz_de, -dz_dn)) % 360.0
    return slope, aspect


# ---------------------------------------------------------------- geometry


def test_look_azimuth_is_right_looking() -> None:
    assert ASCENDING.look_azimuth == pytest.approx(78.0)  # roughly east
    assert DESCENDING.look_azimuth == pytest.approx(282.0)  # roughly west
    assert OrbitGeometry("ascending", 300.0, 35.0, 1).look_azimuth == pytest.approx(30.0)


@pytest.mark.parametrize("geometry", [ASCENDING, DESCENDING])
def test_local_incidence_flat_equals_ellipsoid_incidence(geometry: OrbitGeometry) -> None:
    rng = np.random.default_rng(1)
    theta = local_incidence_angle(np.zeros((8, 8)), rng.uniform(0, 360, (8, 8)), geometry)
    assert theta.dtype == np.float32
    np.testing.assert_allclose(theta, geometry.incidence, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    slope=st.floats(0.0, 80.0),
    incidence=st.floats(20.0, 50.0),
    heading=st.floats(0.0, 360.0),
)
def test_local_incidence_hand_geometry_principal_planes(
    slope: float, incidence: float, heading: float
) -> None:
    g = OrbitGeometry("ascending", heading, incidence, 1)
    toward = (g.look_azimuth + 180.0) % 360.0
    away = g.look_azimuth
    side = (g.look_azimuth + 90.0) % 360.0
    s = full(slope, (1, 3))
    a = np.array([[toward, away, side]])
    theta = local_incidence_angle(s, a, g)[0]
    assert theta[0] == pytest.approx(abs(incidence - slope), abs=2e-3)
    assert theta[1] == pytest.approx(incidence + slope, abs=2e-3)
    expected_side = np.rad2deg(np.arccos(np.cos(np.deg2rad(slope)) * np.cos(np.deg2rad(incidence))))
    assert theta[2] == pytest.approx(expected_side, abs=2e-3)
    if 0.5 < slope < incidence:  # facing the sensor is smaller, facing away larger
        assert theta[0] < incidence < theta[1]


@settings(max_examples=60, deadline=None)
@given(slope=st.floats(0.0, 75.0), aspect=st.floats(0.0, 360.0), heading=st.floats(0.0, 360.0))
def test_local_incidence_matches_plane_normal(slope: float, aspect: float, heading: float) -> None:
    """Against the angle between a plane's normal (from its elevation) and the sensor vector."""
    g = OrbitGeometry("descending", heading, 39.0, 1)
    z = plane((3, 3), slope, aspect)
    # Normal from two in-plane vectors (east step and north step), by a cross product.
    e = np.array([RES, 0.0, z[1, 2] - z[1, 1]])
    n = np.array([0.0, RES, z[0, 1] - z[1, 1]])
    normal = np.cross(e, n)
    normal /= np.linalg.norm(normal)
    t, look = np.deg2rad(39.0), np.deg2rad(g.look_azimuth)
    to_sensor = np.array([-np.sin(t) * np.sin(look), -np.sin(t) * np.cos(look), np.cos(t)])
    expected = np.rad2deg(np.arccos(np.clip(normal @ to_sensor, -1, 1)))
    got = local_incidence_angle(full(slope, (1, 1)), full(aspect, (1, 1)), g)[0, 0]
    assert got == pytest.approx(expected, abs=2e-3)


def test_local_incidence_range() -> None:
    rng = np.random.default_rng(2)
    theta = local_incidence_angle(
        rng.uniform(0, 90, (64, 64)), rng.uniform(0, 360, (64, 64)), ASCENDING
    )
    assert theta.min() >= 0.0
    assert theta.max() < 180.0


def test_flat_ground_has_no_layover_or_shadow() -> None:
    z = np.full((32, 32), 500.0)
    for g in (ASCENDING, DESCENDING):
        lay, sh = layover_shadow(z, RES, g, np.zeros_like(z), np.zeros_like(z))
        assert not lay.any()
        assert not sh.any()
    # A uniformly tilted gentle plane neither.
    z = plane((32, 32), 20.0, 90.0)
    s, a = slope_aspect(z)
    for g in (ASCENDING, DESCENDING):
        lay, sh = layover_shadow(z, RES, g, s, a)
        assert not lay.any()
        assert not sh.any()


@pytest.mark.parametrize("height", [50.0, 100.0, 237.0])
@pytest.mark.parametrize("geometry", [ASCENDING, DESCENDING])
def test_cast_shadow_length_behind_a_cliff(height: float, geometry: OrbitGeometry) -> None:
    """A cliff of height h casts a shadow h * tan(incidence) long on the flat ground behind it."""
    h, w, edge = 8, 120, 30
    z = np.zeros((h, w))
    z[:, :edge] = height  # plateau on the west, cliff facing east
    if geometry.orbit_state == "descending":
        z = z[:, ::-1]  # plateau on the east: the sensor side for descending
    zeros = np.zeros_like(z)
    _, shadow = layover_shadow(z, RES, geometry, zeros, zeros)
    expected_px = height * np.tan(np.deg2rad(geometry.incidence)) / RES
    lengths = shadow.sum(axis=1)
    assert np.all(np.abs(lengths - expected_px) <= 1.0)
    # And the shadow starts right at the foot of the cliff, away from the sensor.
    cols = np.flatnonzero(shadow[0])
    if geometry.orbit_state == "ascending":
        assert cols.min() == edge
    else:
        assert cols.max() == w - edge - 1


def _ridges(shape: tuple[int, int] = (16, 256), amplitude_slope: float = 1.5) -> np.ndarray:
    """East-west sinusoidal ridges (crests north-south), max slope atan(amplitude_slope)."""
    k = 2 * np.pi / (40 * RES)
    x = np.arange(shape[1]) * RES
    z = (amplitude_slope / k) * np.sin(k * x)
    return np.repeat(z[None, :], shape[0], axis=0) + 1000.0


@pytest.mark.parametrize("geometry", [ASCENDING, DESCENDING])
def test_shadow_lies_on_slopes_facing_away(geometry: OrbitGeometry) -> None:
    z = _ridges()
    s, a = slope_aspect(z)
    _, shadow = layover_shadow(z, RES, geometry, s, a)
    assert shadow.any()
    diff = (a[shadow] - geometry.look_azimuth + 180.0) % 360.0 - 180.0
    assert np.all(np.abs(diff) < 90.0)
    assert np.all(s[shadow] > 0.0)


@pytest.mark.parametrize("geometry", [ASCENDING, DESCENDING])
def test_layover_only_on_steep_sensor_facing_slopes(geometry: OrbitGeometry) -> None:
    z = _ridges(amplitude_slope=2.0)  # max slope 63 deg, steeper than the incidence
    s, a = slope_aspect(z)
    layover, _ = layover_shadow(z, RES, geometry, s, a)
    assert layover.any()
    # Facing the sensor (aspect near look + 180) and steeper than the incidence in range.
    rel = np.deg2rad(a - geometry.look_azimuth)
    range_slope = np.rad2deg(np.arctan(-np.tan(np.deg2rad(s)) * np.cos(rel)))
    assert np.all(range_slope[layover] > geometry.incidence)
    assert np.all(s[layover] > geometry.incidence)
    assert not np.any(layover & (range_slope < geometry.incidence - 1e-6))


def test_layover_on_planes() -> None:
    g = ASCENDING
    toward = (g.look_azimuth + 180.0) % 360.0
    for slope, expected in ((45.0, True), (40.0, True), (38.0, False), (30.0, False)):
        z = plane((8, 8), slope, toward)
        lay, _ = layover_shadow(z, RES, g, full(slope, z.shape), full(toward, z.shape))
        assert lay.all() == expected
        assert lay.any() == expected
    # Steep but facing away: no layover, but self-shadow (60 > 90 - 39).
    z = plane((8, 8), 60.0, g.look_azimuth)
    lay, sh = layover_shadow(z, RES, g, full(60.0, z.shape), full(g.look_azimuth, z.shape))
    assert not lay.any()
    assert sh.all()
    # Self-shadow alone (flat elevation, so no cast shadow): back-slopes steeper than the
    # depression angle 90 - 39 = 51 deg are hidden, gentler ones are not.
    flat = np.zeros((8, 8))
    for slope, expected in ((53.0, True), (49.0, False)):
        facing_away = full(g.look_azimuth, flat.shape)
        _, sh = layover_shadow(flat, RES, g, full(slope, flat.shape), facing_away)
        assert sh.all() == expected
        assert sh.any() == expected


# ---------------------------------------------------------------- backscatter


def wcm_db(V: float, mv: float, params, theta: float = 39.0, rough: float = 0.0) -> float:
    return float(
        db(
            water_cloud_gamma0(
                full(V, (1, 1)), full(mv, (1, 1)), full(theta, (1, 1)), params, rough
            )
        )[0, 0]
    )


def test_vh_monotonic_and_vv_increasing_with_water_content() -> None:
    Vs = np.linspace(0.4, 6.0, 57)
    for mv in (0.1, 0.25, 0.35):
        vh = [wcm_db(V, mv, VH_PARAMS) for V in Vs]
        assert np.all(np.diff(vh) > 0)
        vv = [wcm_db(V, mv, VV_PARAMS) for V in np.linspace(1.0, 6.0, 21)]
        assert np.all(np.diff(vv) > 0)
        assert wcm_db(4.0, mv, VV_PARAMS) > wcm_db(0.0, mv, VV_PARAMS) + 2.0
        assert wcm_db(4.0, mv, VH_PARAMS) > wcm_db(0.0, mv, VH_PARAMS) + 5.0


def test_bare_soil_backscatter_increases_with_moisture() -> None:
    for params in (VV_PARAMS, VH_PARAMS):
        values = [wcm_db(0.0, mv, params) for mv in np.linspace(0.05, 0.45, 9)]
        assert np.all(np.diff(values) > 0)
        # Linear in dB with slope D_db.
        assert values[-1] - values[0] == pytest.approx(0.4 * params.D_db, rel=1e-4)


@pytest.mark.parametrize(
    ("V", "mv", "vv_range", "vh_range"),
    [
        (3.0, 0.25, (-8.5, -7.5), (-14.5, -13.5)),  # forest
        (2.0, 0.10, (-10.0, -8.5), (-16.0, -15.0)),  # young / sparse forest
        (5.0, 0.35, (-7.5, -6.0), (-13.5, -12.0)),  # dense forest
        (0.8, 0.25, (-12.5, -11.0), (-19.0, -18.0)),  # shrub / grass
        (0.3, 0.10, (-15.0, -13.5), (-23.0, -21.5)),  # sparse grass
        (0.0, 0.10, (-15.5, -14.0), (-24.5, -23.0)),  # dry bare soil
        (0.0, 0.35, (-12.0, -10.5), (-20.0, -18.5)),  # wet bare soil
    ],
)
def test_backscatter_ranges_per_cover(
    V: float, mv: float, vv_range: tuple[float, float], vh_range: tuple[float, float]
) -> None:
    assert vv_range[0] <= wcm_db(V, mv, VV_PARAMS) <= vv_range[1]
    assert vh_range[0] <= wcm_db(V, mv, VH_PARAMS) <= vh_range[1]


def test_open_water_is_dark_and_constant() -> None:
    vv = open_water_gamma0((5, 7), VV_PARAMS)
    vh = open_water_gamma0((5, 7), VH_PARAMS)
    assert vv.shape == (5, 7)
    assert vv.dtype == np.float32
    np.testing.assert_allclose(db(vv), -20.0, atol=1e-4)
    np.testing.assert_allclose(db(vh), -27.0, atol=1e-4)


def test_roughness_and_incidence_effects() -> None:
    # Rough debris is brighter by the roughness term on bare soil.
    rough = wcm_db(0.0, 0.2, VV_PARAMS, rough=3.0)
    assert rough - wcm_db(0.0, 0.2, VV_PARAMS) == pytest.approx(3.0)
    # Soil is brighter at smaller local incidence (facing the sensor), mildly.
    near, far = wcm_db(0.0, 0.2, VV_PARAMS, 25.0), wcm_db(0.0, 0.2, VV_PARAMS, 55.0)
    assert 2.0 < near - far < 8.0
    # A dense canopy is nearly incidence independent in gamma0.
    assert abs(wcm_db(6.0, 0.2, VV_PARAMS, 25.0) - wcm_db(6.0, 0.2, VV_PARAMS, 55.0)) < 1.0


# ---------------------------------------------------------------- speckle


def test_speckle_statistics() -> None:
    rng = np.random.default_rng(42)
    g0 = np.full((512, 512), 0.1, dtype=np.float32)
    sp = apply_speckle(g0, 4.4, rng).astype(np.float64)
    assert sp.mean() == pytest.approx(0.1, rel=0.01)
    enl = sp.mean() ** 2 / sp.var()
    assert enl == pytest.approx(4.4, rel=0.05)
    sample = sp.ravel()[::16]
    ks = stats.kstest(sample, stats.gamma(a=4.4, scale=0.1 / 4.4).cdf)
    assert ks.pvalue > 0.01
    # Not exponential (single look): the KS test can tell.
    assert stats.kstest(sample, stats.expon(scale=0.1).cdf).pvalue < 1e-6


def test_speckle_keeps_nan_and_dtype() -> None:
    g0 = np.full((16, 16), 0.05, dtype=np.float32)
    g0[3, 4] = np.nan
    sp = apply_speckle(g0, 4.4, np.random.default_rng(0))
    assert sp.dtype == np.float32
    assert np.isnan(sp[3, 4])
    assert np.isfinite(sp).sum() == 255
    with pytest.raises(InputError):
        apply_speckle(g0, 0.0, np.random.default_rng(0))


# ---------------------------------------------------------------- acquisition


def _scene(shape: tuple[int, int] = (128, 128), seed: int = 7):
    rng = np.random.default_rng(seed)
    z = _ridges(shape, amplitude_slope=1.6)
    s, a = slope_aspect(z)
    V = rng.uniform(0.0, 5.0, shape)
    mv = rng.uniform(0.1, 0.35, shape)
    water = s < 8.0  # "ponds" on the flat crests and troughs
    return z, s, a, V, mv, water


def test_acquisition_masks_and_values() -> None:
    z, s, a, V, mv, water = _scene((96, 200))
    acq = simulate_s1_acquisition(
        z,
        s,
        a,
        RES,
        V,
        mv,
        water,
        ASCENDING,
        np.random.default_rng(3),
        isolated_nodata_fraction=0.0,
    )
    for arr in (acq.vv, acq.vh, acq.local_incidence):
        assert arr.dtype == np.float32
        assert arr.shape == z.shape
    assert acq.shadow.any()
    assert acq.layover.any()
    assert np.all(np.isnan(acq.vv[acq.shadow]))
    assert np.all(np.isnan(acq.vh[acq.shadow]))
    assert np.all(np.isfinite(acq.vv[~acq.shadow]))
    # Layover is brighter than comparable non-layover pixels, by several dB.
    lay_mean = np.nanmean(acq.vv[acq.layover])
    normal = ~acq.layover & ~acq.shadow & ~water
    assert db(lay_mean) - db(np.nanmean(acq.vv[normal])) > 3.0
    # Open water is dark: ~-20 dB VV on average.
    assert db(np.mean(acq.vv[water & ~acq.layover & ~acq.shadow])) == pytest.approx(-20.0, abs=0.5)


def test_isolated_nodata_fraction() -> None:
    shape = (256, 256)
    flat = np.zeros(shape)
    acq = simulate_s1_acquisition(
        flat,
        flat,
        flat,
        RES,
        np.full(shape, 2.0),
        np.full(shape, 0.2),
        np.zeros(shape, bool),
        DESCENDING,
        np.random.default_rng(11),
        isolated_nodata_fraction=0.01,
    )
    missing = np.isnan(acq.vv)
    assert not acq.shadow.any()
    assert missing.mean() == pytest.approx(0.01, rel=0.15)
    np.testing.assert_array_equal(missing, np.isnan(acq.vh))
    # Mostly isolated: few missing pixels have a missing 4-neighbour.
    nb = np.zeros_like(missing)
    nb[1:] |= missing[:-1]
    nb[:-1] |= missing[1:]
    nb[:, 1:] |= missing[:, :-1]
    nb[:, :-1] |= missing[:, 1:]
    assert (missing & nb).sum() < 0.1 * missing.sum()


def test_acquisition_is_deterministic() -> None:
    scene = _scene((64, 64))
    a = simulate_s1_acquisition(*scene[:3], RES, *scene[3:], DESCENDING, np.random.default_rng(5))
    b = simulate_s1_acquisition(*scene[:3], RES, *scene[3:], DESCENDING, np.random.default_rng(5))
    c = simulate_s1_acquisition(*scene[:3], RES, *scene[3:], DESCENDING, np.random.default_rng(6))
    assert a.vv.tobytes() == b.vv.tobytes()
    assert a.vh.tobytes() == b.vh.tobytes()
    assert a.vv.tobytes() != c.vv.tobytes()


def test_acquisition_rejects_bad_shapes() -> None:
    z = np.zeros((8, 8))
    with pytest.raises(InputError):
        simulate_s1_acquisition(
            z, z, z, RES, z, np.zeros((8, 9)), z.astype(bool), ASCENDING, np.random.default_rng(0)
        )
