"""Tests of the Sentinel-2 L2A twin: spectra, illumination, clouds, SCL, DNs, resampling."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from skimage.measure import block_reduce

from sar2ndvi.errors import InputError
from sar2ndvi.synth.optical import (
    S2_BANDS,
    SCL,
    block_mean,
    block_mode,
    cloud_shadow_offset,
    from_l2a_digital_numbers,
    illumination_factor,
    simulate_clouds,
    simulate_s2_acquisition,
    surface_reflectance,
    to_l2a_digital_numbers,
)

# Land-cover codes of sar2ndvi.synth.vegetation.LandCover.
WATER, RIVER_BED, BARE_ROCK, SHRUB_GRASS, FOREST, LANDSLIDE = 1, 2, 3, 4, 5, 6
_FIXTURE_NAME = "fixtures/stac/sentinel-2-l2a-pc.json"
FIXTURE = next(
    (
        p / _FIXTURE_NAME
        for p in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared"))
        if (p / _FIXTURE_NAME).exists()
    ),
    Path("/work/shared") / _FIXTURE_NAME,
)


def ndvi_of(r: dict[str, np.ndarray]) -> np.ndarray:
    return (r["B08"] - r["B04"]) / (r["B08"] + r["B04"])


# ---------------------------------------------------------------- bands


def test_band_table_matches_planetary_computer_item() -> None:
    if not FIXTURE.exists():
        pytest.skip(f"fixture {FIXTURE} not available")
    item = json.loads(FIXTURE.read_text())[0]
    expected = {}
    for key, asset in item["assets"].items():
        if "eo:bands" in asset and key.startswith("B"):
            band = asset["eo:bands"][0]
            expected[key] = (
                band.get("common_name"),
                band["center_wavelength"],
                band["full_width_half_max"],
                int(asset["gsd"]),
            )
    got = {
        k: (b.common_name, b.center_wavelength, b.full_width_half_max, b.resolution)
        for k, b in S2_BANDS.items()
    }
    assert got == expected
    assert "B10" not in S2_BANDS
    assert all(b.name == k for k, b in S2_BANDS.items())


def test_band_table_static_values() -> None:
    assert len(S2_BANDS) == 12
    assert S2_BANDS["B8A"].center_wavelength == 0.865
    assert {k for k, b in S2_BANDS.items() if b.resolution == 10} == {"B02", "B03", "B04", "B08"}
    assert {k for k, b in S2_BANDS.items() if b.resolution == 60} == {"B01", "B09"}


def test_scl_codes() -> None:
    assert SCL.CLOUD_SHADOWS == 3
    assert SCL.VEGETATION == 4
    assert SCL.WATER == 6
    assert SCL.CLOUD_HIGH_PROBABILITY == 9
    assert SCL.THIN_CIRRUS == 10
    assert SCL.SNOW == 11
    assert [int(c) for c in SCL] == list(range(12))


# ---------------------------------------------------------------- surface reflectance


@settings(max_examples=40, deadline=None)
@given(
    ndvi=arrays(np.float64, (6, 7), elements=st.floats(-1.0, 1.0)),
    cover=arrays(np.int64, (6, 7), elements=st.integers(0, 7)),
    seed=st.integers(0, 2**32 - 1),
)
def test_reflectance_reproduces_ndvi_and_is_physical(
    ndvi: np.ndarray, cover: np.ndarray, seed: int
) -> None:
    r = surface_reflectance(ndvi, cover, np.random.default_rng(seed))
    assert set(r) == set(S2_BANDS)
    for band in r.values():
        assert band.dtype == np.float32
        assert band.shape == ndvi.shape
        assert np.all((band >= 0.0) & (band <= 1.0))
    np.testing.assert_allclose(ndvi_of(r), ndvi, atol=1e-5)


def test_reflectance_nan_is_nodata() -> None:
    ndvi = np.full((4, 4), 0.5)
    ndvi[1, 2] = np.nan
    r = surface_reflectance(ndvi, np.full((4, 4), FOREST), np.random.default_rng(0))
    for band in r.values():
        assert np.isnan(band[1, 2])
        assert np.isfinite(band).sum() == 15


def _mean_spectrum(ndvi: float, cover: int) -> dict[str, float]:
    r = surface_reflectance(
        np.full((32, 32), ndvi), np.full((32, 32), cover), np.random.default_rng(1)
    )
    return {k: float(v.mean()) for k, v in r.items()}


@pytest.mark.parametrize(("ndvi", "cover"), [(0.85, FOREST), (0.7, SHRUB_GRASS)])
def test_vegetation_has_a_red_edge(ndvi: float, cover: int) -> None:
    s = _mean_spectrum(ndvi, cover)
    assert s["B8A"] > 2.0 * s["B05"]
    assert s["B07"] > s["B06"] > s["B05"]
    assert s["B03"] > s["B04"]  # green peak
    assert s["B8A"] > s["B11"] > s["B12"]


@pytest.mark.parametrize(
    ("ndvi", "cover"), [(0.05, BARE_ROCK), (0.08, LANDSLIDE), (0.1, RIVER_BED)]
)
def test_soil_and_rock_have_no_red_edge(ndvi: float, cover: int) -> None:
    s = _mean_spectrum(ndvi, cover)
    assert s["B8A"] < 1.3 * s["B05"]
    assert s["B04"] > s["B03"]  # no green peak
    assert s["B04"] > 0.12


def test_water_is_dark_in_nir_and_swir() -> None:
    s = _mean_spectrum(-0.5, WATER)
    assert s["B08"] < 0.03
    assert s["B11"] < 0.01
    assert s["B03"] > s["B08"]


def test_fresh_debris_brighter_than_forest_in_the_visible() -> None:
    debris, forest = _mean_spectrum(0.1, LANDSLIDE), _mean_spectrum(0.85, FOREST)
    for band in ("B02", "B03", "B04", "B11", "B12"):
        assert debris[band] > forest[band]


# ---------------------------------------------------------------- illumination


def test_illumination_factor_geometry() -> None:
    f = illumination_factor(np.zeros((3, 3)), np.zeros((3, 3)), 30.0, 140.0)
    np.testing.assert_allclose(f, 1.0, atol=1e-6)
    slope = np.full((1, 2), 25.0)
    aspect = np.array([[140.0, 320.0]])  # facing the sun, facing away
    toward, away = illumination_factor(slope, aspect, 30.0, 140.0)[0]
    c = 0.4
    sz = np.deg2rad(30.0)
    assert toward == pytest.approx((np.cos(sz - np.deg2rad(25)) + c) / (np.cos(sz) + c), rel=1e-5)
    assert away == pytest.approx((np.cos(sz + np.deg2rad(25)) + c) / (np.cos(sz) + c), rel=1e-5)
    rng = np.random.default_rng(0)
    f = illumination_factor(rng.uniform(0, 89, (64, 64)), rng.uniform(0, 360, (64, 64)), 70.0, 10)
    assert f.min() >= 0.2
    assert f.max() <= 1.6
    assert f.min() == pytest.approx(0.2)
    assert f.max() == pytest.approx(1.6)


# ---------------------------------------------------------------- clouds


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.3, 0.7, 1.0])
def test_cloud_share_matches_request(fraction: float) -> None:
    cloud, shadow = simulate_clouds(
        (256, 256), 10.0, np.random.default_rng(3), fraction, 35.0, 150.0
    )
    assert cloud.dtype == np.uint8
    assert set(np.unique(cloud).tolist()) <= {0, 8, 9, 10}
    assert (cloud > 0).mean() == pytest.approx(fraction, abs=0.01)
    assert not np.any(shadow & (cloud > 0))
    if 0.0 < fraction < 1.0:
        assert {8, 9, 10} <= set(np.unique(cloud).tolist())
        assert shadow.any()
        # Thick cores sit inside the cloud, cirrus is the smallest share.
        assert (cloud == 10).sum() < (cloud == 9).sum()


@pytest.mark.parametrize(("zenith", "azimuth"), [(35.0, 150.0), (50.0, 250.0), (20.0, 30.0)])
def test_cloud_shadow_displaced_away_from_the_sun(zenith: float, azimuth: float) -> None:
    res, height = 10.0, 1500.0
    cloud, shadow = simulate_clouds(
        (256, 256), res, np.random.default_rng(4), 0.1, zenith, azimuth, cloud_height_m=height
    )
    distance = height * np.tan(np.deg2rad(zenith)) / res
    drow, dcol = cloud_shadow_offset(res, zenith, azimuth, height)
    assert np.hypot(drow, dcol) == pytest.approx(distance, abs=1.0)
    # The shift is towards the anti-sun azimuth (rows grow south, columns east).
    anti = np.rad2deg(np.arctan2(dcol, -drow)) % 360.0
    assert abs((anti - (azimuth + 180.0) + 180.0) % 360.0 - 180.0) < 5.0
    # Cross-correlate opaque clouds with shadows: the best lag is (drow, dcol).
    opaque = np.isin(cloud, (8, 9)).astype(float)
    pad = (512, 512)  # zero-padded: no circular wrap of the long shadows
    spec = np.fft.fft2(shadow.astype(float), pad) * np.conj(np.fft.fft2(opaque, pad))
    corr = np.fft.ifft2(spec).real
    peak = np.unravel_index(np.argmax(corr), corr.shape)
    lag = [(p + n // 2) % n - n // 2 for p, n in zip(peak, corr.shape, strict=True)]
    assert lag == [drow, dcol]
    # Every shadow pixel is an opaque cloud pixel moved by the offset.
    rows, cols = np.nonzero(shadow)
    assert np.all(opaque[rows - drow, cols - dcol] == 1)


def test_clouds_reject_bad_fraction() -> None:
    with pytest.raises(InputError):
        simulate_clouds((8, 8), 10.0, np.random.default_rng(0), 1.5, 30.0, 100.0)


# ---------------------------------------------------------------- acquisition


def _landscape(shape: tuple[int, int] = (128, 128)):
    cover = np.full(shape, FOREST)
    cover[:, :20] = WATER
    cover[:, 20:40] = RIVER_BED
    cover[:, 40:60] = LANDSLIDE
    cover[:, 60:80] = SHRUB_GRASS
    ndvi = np.select(
        [cover == WATER, cover == RIVER_BED, cover == LANDSLIDE, cover == SHRUB_GRASS],
        [-0.4, 0.12, 0.2, 0.6],
        0.82,
    ).astype(np.float64)
    slope = np.zeros(shape)
    aspect = np.zeros(shape)
    return ndvi, cover, slope, aspect


def test_clear_scene_scl_per_class() -> None:
    ndvi, cover, slope, aspect = _landscape()
    # A deep terrain-shadow patch: steep slope facing away from a low sun.
    slope[100:110, 100:110] = 80.0
    aspect[100:110, 100:110] = 0.0  # north-facing, sun in the south
    acq = simulate_s2_acquisition(
        ndvi,
        cover,
        slope,
        aspect,
        np.random.default_rng(0),
        resolution=10.0,
        cloud_fraction=0.0,
        sun_zenith=30.0,
        sun_azimuth=180.0,
    )
    assert acq.scl.dtype == np.uint8
    assert acq.cloud_cover == 0.0
    assert np.all(acq.scl[cover == WATER] == SCL.WATER)
    assert np.all(acq.scl[:, 20:60] == SCL.NOT_VEGETATED)
    assert np.all(acq.scl[:, 60:80] == SCL.VEGETATION)
    assert np.all(acq.scl[100:110, 100:110] == SCL.DARK_AREA_PIXELS)
    forest = (cover == FOREST) & (slope == 0)
    assert np.all(acq.scl[forest] == SCL.VEGETATION)
    # Illumination is NDVI-invariant; calibration noise moves NDVI by far less than 0.02.
    n = ndvi_of(acq.reflectance)
    assert np.max(np.abs(n - ndvi)[slope == 0]) < 0.02
    for band in acq.reflectance.values():
        assert band.dtype == np.float32
        assert band.shape == ndvi.shape


def test_cloudy_scene_scl_and_radiometry() -> None:
    ndvi, cover, slope, aspect = _landscape((256, 256))
    ndvi[5, 5] = np.nan
    rng = np.random.default_rng(8)
    clear = simulate_s2_acquisition(
        ndvi,
        cover,
        slope,
        aspect,
        np.random.default_rng(8),
        resolution=10.0,
        cloud_fraction=0.0,
        sun_zenith=40.0,
        sun_azimuth=160.0,
    )
    acq = simulate_s2_acquisition(
        ndvi,
        cover,
        slope,
        aspect,
        rng,
        resolution=10.0,
        cloud_fraction=0.4,
        sun_zenith=40.0,
        sun_azimuth=160.0,
    )
    scl = acq.scl
    assert acq.cloud_cover == pytest.approx(40.0, abs=2.0)
    assert acq.cloud_cover == pytest.approx(100.0 * np.isin(scl, (8, 9, 10)).mean())
    assert scl[5, 5] == SCL.NO_DATA
    assert np.isnan(acq.reflectance["B02"][5, 5])
    assert (scl == SCL.CLOUD_SHADOWS).any()
    blue = acq.reflectance["B02"]
    # Thick cloud: bright and flat, 0.4-0.7 in the visible.
    core = scl == SCL.CLOUD_HIGH_PROBABILITY
    assert blue[core].min() >= 0.39
    assert blue[core].max() <= 0.71
    assert np.allclose(acq.reflectance["B04"][core], blue[core], rtol=0.03)
    # Shadows darken the surface by 0.2-0.4 (plus < 1 % calibration noise).
    sh = scl == SCL.CLOUD_SHADOWS
    ratio = acq.reflectance["B08"][sh] / clear.reflectance["B08"][sh]
    assert np.all((ratio > 0.19) & (ratio < 0.41))
    # Cirrus adds 0.02-0.08 over the surface.
    ci = scl == SCL.THIN_CIRRUS
    extra = acq.reflectance["B03"][ci] - clear.reflectance["B03"][ci]
    assert np.all((extra > 0.015) & (extra < 0.085))


def test_acquisition_is_deterministic() -> None:
    ndvi, cover, slope, aspect = _landscape((64, 64))

    def run(seed: int):
        return simulate_s2_acquisition(
            ndvi,
            cover,
            slope,
            aspect,
            np.random.default_rng(seed),
            resolution=10.0,
            cloud_fraction=0.3,
            sun_zenith=30.0,
            sun_azimuth=150.0,
        )

    a, b, c = run(1), run(1), run(2)
    assert a.scl.tobytes() == b.scl.tobytes()
    assert all(a.reflectance[k].tobytes() == b.reflectance[k].tobytes() for k in S2_BANDS)
    assert a.reflectance["B04"].tobytes() != c.reflectance["B04"].tobytes()
    r1 = surface_reflectance(ndvi, cover, np.random.default_rng(3))
    r2 = surface_reflectance(ndvi, cover, np.random.default_rng(3))
    assert all(r1[k].tobytes() == r2[k].tobytes() for k in S2_BANDS)


# ---------------------------------------------------------------- digital numbers


def test_dn_offset_by_processing_baseline() -> None:
    refl = np.array([[0.0, 0.1234, 0.5, np.nan, -0.05, 7.0]])
    old = to_l2a_digital_numbers(refl, "03.01")
    new = to_l2a_digital_numbers(refl, "05.10")
    assert old.dtype == np.uint16
    np.testing.assert_array_equal(old, [[1, 1234, 5000, 0, 1, 65535]])
    np.testing.assert_array_equal(new, [[1000, 2234, 6000, 0, 500, 65535]])
    np.testing.assert_array_equal(to_l2a_digital_numbers(refl, "04.00"), new)
    # Version, not string, comparison.
    np.testing.assert_array_equal(to_l2a_digital_numbers(refl, "4.0"), new)
    np.testing.assert_array_equal(to_l2a_digital_numbers(refl, "02.14"), old)
    with pytest.raises(InputError):
        to_l2a_digital_numbers(refl, "N0510")


@pytest.mark.parametrize("baseline", ["03.01", "04.00", "05.10"])
def test_dn_round_trip(baseline: str) -> None:
    refl = np.random.default_rng(5).uniform(0.0, 1.0, (64, 64)).astype(np.float32)
    dn = to_l2a_digital_numbers(refl, baseline)
    back = from_l2a_digital_numbers(dn, baseline)
    offset = 1000 if baseline >= "04.00" else 0
    np.testing.assert_allclose((dn.astype(np.float64) - offset) / 10000.0, refl, atol=1e-4)
    np.testing.assert_allclose(back, refl, atol=1e-4)
    assert np.isnan(from_l2a_digital_numbers(np.zeros((1, 1), np.uint16), baseline)).all()


# ---------------------------------------------------------------- resampling


def test_block_mean_hand_example() -> None:
    a = np.array(
        [[1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, np.nan, 8.0, 7.0], [1.0, 1.0, np.nan, np.nan, 9.0]]
    )
    expected = np.array([[2.5, 5.0, 6.0], [1.0, np.nan, 9.0]], dtype=np.float32)
    got = block_mean(a, 2)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_block_mean_matches_skimage() -> None:
    rng = np.random.default_rng(6)
    a = rng.uniform(0, 1, (61, 47))
    a[rng.random(a.shape) < 0.2] = np.nan
    a[:6, :6] = np.nan  # an all-NaN block
    for factor in (2, 3, 6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN block
            ref = block_reduce(a, (factor, factor), np.nanmean, cval=np.nan)
        np.testing.assert_allclose(block_mean(a, factor), ref, rtol=1e-6, equal_nan=True)


def test_block_mode_hand_example() -> None:
    a = np.array(
        [[4, 4, 8, 9, 6], [5, 4, 9, 8, 6], [3, 3, 0, 0, 2]],
        dtype=np.uint8,
    )
    # Blocks: {4,4,5,4} -> 4; {8,9,9,8} tie -> 8; {6,6} -> 6; {3,3} -> 3; {0,0} -> 0; {2} -> 2.
    expected = np.array([[4, 8, 6], [3, 0, 2]], dtype=np.uint8)
    got = block_mode(a, 2)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_block_mode_matches_skimage() -> None:
    rng = np.random.default_rng(7)
    a = rng.choice(
        np.array([0, 3, 4, 5, 6, 8, 9, 10], dtype=np.uint8),
        size=(60, 48),
        p=[0.05, 0.1, 0.3, 0.2, 0.1, 0.1, 0.1, 0.05],
    )

    def mode(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
        flat = x.reshape(*x.shape[:2], -1)
        return stats.mode(flat, axis=-1, keepdims=False).mode

    for factor in (2, 3, 6):
        ref = block_reduce(a, (factor, factor), mode)
        np.testing.assert_array_equal(block_mode(a, factor), ref)


def test_block_reducers_reject_bad_input() -> None:
    with pytest.raises(InputError):
        block_mean(np.zeros((4, 4)), 0)
    with pytest.raises(InputError):
        block_mode(np.zeros((4, 4)), 2)
