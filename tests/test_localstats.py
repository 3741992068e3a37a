"""Local mean/std: values against brute force, xarray and scipy; chunking; laziness."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from unittest import mock

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from sar2ndvi import localstats
from sar2ndvi.localstats import local_mean_std, local_mean_std_numpy

WINDOWS = list(range(3, 32, 2))
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def brute_force(a: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel, np.nanmean / np.nanstd over the window clipped to the array."""
    r = w // 2
    ny, nx = a.shape
    mean = np.full(a.shape, np.nan)
    std = np.full(a.shape, np.nan)
    for i in range(ny):
        for j in range(nx):
            win = a[max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1].astype(np.float64)
            if np.isnan(win).all():
                continue
            mean[i, j] = np.nanmean(win)
            std[i, j] = np.nanstd(win)
    return mean, std


def brute_force_fast(a: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The same reference, vectorised: NaN padding + a sliding window view (float64)."""
    r = w // 2
    pad = [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)]
    p = np.pad(a.astype(np.float64), pad, constant_values=np.nan)
    view = np.lib.stride_tricks.sliding_window_view(p, (w, w), axis=(-2, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(view, axis=(-2, -1)), np.nanstd(view, axis=(-2, -1))


def holey(shape, seed=0, frac=0.15, loc=-15.0, scale=2.0) -> np.ndarray:
    """dB-like data with isolated NaNs, a NaN hole larger than any window and a NaN row."""
    rng = np.random.default_rng(seed)
    a = rng.normal(loc, scale, shape).astype(np.float32)
    a[rng.random(shape) < frac] = np.nan
    ny, nx = shape[-2:]
    a[..., ny // 4 : ny // 4 + max(ny // 2, 1), : max(nx // 2, 1)] = np.nan
    a[..., -1, :] = np.nan
    return a


def assert_close(got, want, atol):
    got = np.asarray(got)
    assert got.dtype == np.float32
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, equal_nan=True)


# ---- values -----------------------------------------------------------------------------


@pytest.mark.parametrize("use_numba", [True, False], ids=["numba", "numpy"])
def test_every_odd_window_matches_brute_force(use_numba):
    if use_numba and not localstats.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    a = holey((26, 33), seed=1)
    a[3:, 16:] = np.nan  # windows that hold no valid value at all, even at w=31
    a[0, 0] = 7.5  # an isolated valid value next to NaNs
    for w in WINDOWS:
        r = w // 2
        E = np.pad(a, r, constant_values=np.nan)
        mean, std = localstats._stats_block(E, w, -r, -r, *a.shape, use_numba=use_numba)
        ref_mean, ref_std = brute_force(a, w)
        assert np.isnan(ref_mean).any()  # the all-NaN windows are really there
        assert_close(mean, ref_mean, atol=1e-5)
        assert_close(std, ref_std, atol=1e-5)


def test_fast_reference_equals_plain_reference():
    a = holey((17, 12), seed=2)
    for w in (3, 9, 31):
        for got, want in zip(brute_force_fast(a, w), brute_force(a, w), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_matches_xarray_rolling():
    a = holey((31, 40), seed=3)
    y = np.arange(31) * -10.0
    x = np.arange(40) * 10.0
    img = xr.DataArray(a, dims=("y", "x"), coords={"y": y, "x": x}, name="vv_db")
    for w in (3, 11, 29):
        roll = img.rolling(y=w, x=w, center=True, min_periods=1)
        mean, std = local_mean_std(img, w)
        assert_close(mean.values, roll.mean().values.astype(np.float64), atol=1e-5)
        assert_close(std.values, roll.std().values.astype(np.float64), atol=1e-5)


def test_matches_uniform_filter_in_the_interior():
    rng = np.random.default_rng(4)
    a = rng.normal(-15.0, 2.0, (60, 70)).astype(np.float32)
    for w in (3, 15, 29):
        r = w // 2
        mean, std = local_mean_std_numpy(a, w)
        a64 = a.astype(np.float64)
        m = ndimage.uniform_filter(a64, w, mode="constant")
        m2 = ndimage.uniform_filter(a64 * a64, w, mode="constant")
        inner = (slice(r, -r), slice(r, -r))
        np.testing.assert_allclose(mean[inner], m[inner], rtol=0, atol=1e-5)
        np.testing.assert_allclose(std[inner], np.sqrt(m2 - m * m)[inner], rtol=0, atol=1e-4)


def test_window_one_is_identity():
    a = holey((9, 8), seed=5)
    mean, std = local_mean_std_numpy(a, 1)
    np.testing.assert_array_equal(mean, a)
    np.testing.assert_array_equal(std, np.where(np.isnan(a), np.nan, 0.0).astype(np.float32))


# ---- accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize(("loc", "scale"), [(-15.0, 1.0), (-25.0, 0.5), (1000.0, 0.01)])
def test_large_offsets_keep_float32_precision(loc, scale):
    rng = np.random.default_rng(6)
    a = rng.normal(loc, scale, (64, 64)).astype(np.float32)
    for w in (3, 11, 29):
        mean, std = local_mean_std_numpy(a, w)
        ref_mean, ref_std = brute_force_fast(a, w)
        np.testing.assert_allclose(mean, ref_mean, rtol=2e-7)
        # std to float32 precision of the std itself, not just of the data scale
        np.testing.assert_allclose(std, ref_std, rtol=2e-6)


def test_large_offset_with_nan_holes_stays_accurate():
    rng = np.random.default_rng(7)
    a = rng.normal(1000.0, 0.01, (48, 48)).astype(np.float32)
    a[rng.random(a.shape) < 0.3] = np.nan  # some windows lose their anchor pixel
    for w in (5, 29):
        _, std = local_mean_std_numpy(a, w)
        _, ref_std = brute_force_fast(a, w)
        # a window whose anchor pixel is NaN falls back to plain float64 sums
        np.testing.assert_allclose(std, ref_std, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("value", [-15.3, 1000.1, 0.0, 3.0e7])
def test_constant_data_has_std_exactly_zero(value):
    a = np.full((40, 45), value, np.float32)
    holes = a.copy()
    holes[np.random.default_rng(8).random(a.shape) < 0.3] = np.nan
    for img in (a, holes):
        for w in (3, 13, 31):
            mean, std = local_mean_std_numpy(img, w)
            valid = ~np.isnan(std)
            assert valid.any()
            assert (std[valid] == 0.0).all()
            np.testing.assert_allclose(mean[valid], np.float32(value), rtol=1e-7)


def test_single_valid_value_has_std_zero():
    a = np.full((11, 11), np.nan, np.float32)
    a[5, 5] = -12.25
    mean, std = local_mean_std_numpy(a, 5)
    inside = np.zeros(a.shape, bool)
    inside[3:8, 3:8] = True
    assert (mean[inside] == np.float32(-12.25)).all()
    assert (std[inside] == 0.0).all()
    assert np.isnan(mean[~inside]).all()
    assert np.isnan(std[~inside]).all()


# ---- chunking, laziness, types ------------------------------------------------------------


@st.composite
def cases(draw):
    ny = draw(st.integers(1, 80))
    nx = draw(st.integers(1, 80))
    w = draw(st.sampled_from([1, 3, 5, 7, 11, 15, 21, 29, 31]))

    def chunking(n):
        sizes = []
        while sum(sizes) < n:
            sizes.append(draw(st.integers(1, n)))
        sizes[-1] -= sum(sizes) - n
        return tuple(s for s in sizes if s)

    chunks = (chunking(ny), chunking(nx))
    seed = draw(st.integers(0, 2**16))
    frac = draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))
    return ny, nx, w, chunks, seed, frac


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_dask_equals_numpy_exactly_for_any_chunking(case):
    ny, nx, w, chunks, seed, frac = case
    rng = np.random.default_rng(seed)
    a = rng.normal(-15.0, 3.0, (ny, nx)).astype(np.float32)
    a[rng.random(a.shape) < frac] = np.nan
    mean, std = local_mean_std_numpy(a, w)
    with mock.patch.object(localstats, "_MIN_BLOCK", 1):  # keep the small chunks
        dmean, dstd = local_mean_std(da.from_array(a, chunks=chunks), w)
    assert isinstance(dmean, da.Array)
    assert all(min(c) >= min(w // 2, n) for c, n in zip(dmean.chunks, (ny, nx), strict=True))
    dmean, dstd = dask.compute(dmean, dstd, scheduler="threads")
    np.testing.assert_array_equal(dmean, mean)  # NaNs in the same places, same bits
    np.testing.assert_array_equal(dstd, std)
    ref_mean, ref_std = brute_force_fast(a, w)
    assert_close(mean, ref_mean, atol=1e-5)
    assert_close(std, ref_std, atol=1e-5)


def test_chunks_smaller_than_the_halo_are_merged():
    a = holey((37, 41), seed=9)
    x = da.from_array(a, chunks=(1, 3))  # halo of w // 2 = 14 is wider than every chunk
    with mock.patch.object(localstats, "_MIN_BLOCK", 1):
        mean, std = local_mean_std(x, 29)
    assert min(mean.chunks[0]) >= 14
    assert min(mean.chunks[1]) >= 14
    assert len(mean.chunks[0]) > 1
    assert len(mean.chunks[1]) > 1
    want = local_mean_std_numpy(a, 29)
    np.testing.assert_array_equal(mean.compute(), want[0])
    np.testing.assert_array_equal(std.compute(), want[1])


def test_small_chunks_are_merged_to_working_blocks_and_large_ones_kept():
    x = da.zeros((3, 600, 1000), chunks=(1, 64, (500, 200, 300)), dtype=np.float32)
    mean, std = local_mean_std(x, 11)
    assert mean.chunks == std.chunks
    assert mean.chunks[0] == (1, 1, 1)
    assert sum(mean.chunks[1]) == 600
    assert min(mean.chunks[1]) >= 256
    assert mean.chunks[2] == (500, 500)  # 200 < 256 merged with its neighbour
    assert mean.dtype == np.float32
    assert std.dtype == np.float32
    y = da.zeros((512, 768), chunks=256, dtype=np.float32)
    assert local_mean_std(y, 29)[0].chunks == y.chunks


def _forbidden_scheduler(*args, **kwargs):
    raise AssertionError("local_mean_std computed something eagerly")


def test_lazy_on_dask_and_xarray():
    a = holey((2, 50, 60), seed=10)
    x = da.from_array(a, chunks=(1, 20, 25))
    img = xr.DataArray(x, dims=("time", "y", "x"))
    with dask.config.set(scheduler=_forbidden_scheduler):
        mean, std = local_mean_std(x, 29)
        xmean, xstd = local_mean_std(img, 29)
    assert isinstance(mean, da.Array)
    assert isinstance(std, da.Array)
    assert isinstance(xmean.data, da.Array)
    assert isinstance(xstd.data, da.Array)
    np.testing.assert_array_equal(xmean.values, mean.compute())


def test_leading_dims_are_independent():
    a = np.stack([holey((30, 35), seed=s) for s in range(3)])
    img = xr.DataArray(
        a,
        dims=("time", "y", "x"),
        coords={"time": [1, 2, 3], "y": np.arange(30.0), "x": np.arange(35.0)},
        attrs={"grid_mapping": "spatial_ref", "units": "dB"},
        name="vh_db",
    )
    mean, std = local_mean_std(img, 11)
    assert mean.dims == img.dims
    assert std.dims == img.dims
    for c in img.coords:
        np.testing.assert_array_equal(mean[c].values, img[c].values)
    assert mean.attrs["long_name"] == "local mean over 11x11 px"
    assert mean.attrs["window"] == 11
    assert std.attrs["window"] == 11
    assert std.attrs["grid_mapping"] == "spatial_ref"
    assert isinstance(mean.data, np.ndarray)
    assert mean.dtype == np.float32
    for t in range(3):
        m2, s2 = local_mean_std_numpy(a[t], 11)
        np.testing.assert_array_equal(mean.values[t], m2)
        np.testing.assert_array_equal(std.values[t], s2)
    dmean, dstd = local_mean_std(da.from_array(a, chunks=(2, 7, 35)), 11)
    np.testing.assert_array_equal(dmean.compute(), mean.values)
    np.testing.assert_array_equal(dstd.compute(), std.values)


def test_other_input_dtypes_give_float32():
    a = np.arange(60, dtype=np.int16).reshape(6, 10)
    mean, std = local_mean_std(a, 3)
    assert mean.dtype == np.float32
    assert std.dtype == np.float32
    ref_mean, ref_std = brute_force(a.astype(np.float64), 3)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=1e-6)
    m64, _ = local_mean_std(a.astype(np.float64), 3)
    assert m64.dtype == np.float32


@pytest.mark.parametrize("window", [0, -1, 2, 30, 257, 3.0, True, "11"])
def test_bad_windows_are_refused(window):
    with pytest.raises(ValueError, match="window"):
        local_mean_std(np.zeros((5, 5), np.float32), window)


def test_one_dimensional_input_is_refused():
    with pytest.raises(ValueError, match="2 dims"):
        local_mean_std(np.zeros(5, np.float32), 3)


def test_numba_and_numpy_paths_give_the_same_bits():
    if not localstats.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    a = holey((3, 45, 52), seed=11, loc=1000.0, scale=0.01)
    for w in (3, 17, 31):
        r = w // 2
        E = np.pad(a, [(0, 0), (r, r), (r, r)], constant_values=np.nan)
        fast = localstats._stats_block(E, w, -r, -r, 45, 52, use_numba=True)
        slow = localstats._stats_block(E, w, -r, -r, 45, 52, use_numba=False)
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_array_equal(fast[1], slow[1])


# ---- the benchmark ------------------------------------------------------------------------


def test_benchmark_quick_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("local_stats", BENCHMARKS / "local_stats.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "local_stats.json").read_text())
    assert record["values_agree"] is True
    assert record["max_abs_diff"]["mean"] < 1e-4
    assert record["max_abs_diff"]["std"] < 1e-4
