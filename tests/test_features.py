"""The feature stack: each step on values, laziness, and the simulated scene."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.callbacks import Callback
from hypothesis import given, settings
from hypothesis import strategies as st

from sar2ndvi.errors import InputError
from sar2ndvi.features import (
    PAPER_CHANNELS,
    FeatureSpec,
    build_features,
    denormalise,
    impute_isolated,
    ndvi_target,
    normalisation_stats,
    normalise,
    orbit_means,
    terrain_encodings,
    variant,
)

RES = 10.0


def _grid_coords(ny, nx):
    return {"y": 3_800_000.0 - RES * (np.arange(ny) + 0.5),
            "x": 390_000.0 + RES * (np.arange(nx) + 0.5)}


def _image(values, chunks=None):
    ny, nx = values.shape[-2:]
    dims = ("y", "x") if values.ndim == 2 else ("time", "y", "x")
    arr = xr.DataArray(values, dims=dims, coords=_grid_coords(ny, nx))
    return arr.chunk(chunks) if chunks else arr


# --- imputation ----------------------------------------------------------------------------

def _impute_reference(a, min_valid):
    out = a.copy()
    ny, nx = a.shape
    for i in range(ny):
        for j in range(nx):
            if np.isfinite(a[i, j]):
                continue
            neigh = [a[r, c] for r in range(i - 1, i + 2) for c in range(j - 1, j + 2)
                     if (r, c) != (i, j) and 0 <= r < ny and 0 <= c < nx
                     and np.isfinite(a[r, c])]
            if len(neigh) >= min_valid:
                out[i, j] = np.mean(neigh)
    return out


def test_an_isolated_gap_is_filled_with_the_neighbour_mean_and_a_hole_is_not():
    a = np.arange(49, dtype=np.float32).reshape(7, 7)
    a[1, 1] = np.nan           # isolated: 8 valid neighbours
    a[4:7, 4:7] = np.nan       # a 3x3 hole at the corner: its centre has no valid neighbour
    out = impute_isolated(_image(a, {"y": 3, "x": 3})).values
    assert out[1, 1] == pytest.approx(np.mean([0, 1, 2, 7, 9, 14, 15, 16]))
    assert np.isnan(out[5, 5])
    assert np.isnan(out[6, 6])
    np.testing.assert_allclose(out, _impute_reference(a, 5), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(3, 24), st.integers(3, 24)),
       chunk=st.tuples(st.integers(1, 12), st.integers(1, 12)),
       nan_share=st.floats(0.0, 0.6), seed=st.integers(0, 2**16),
       min_valid=st.integers(1, 8))
def test_imputation_matches_the_reference_for_any_chunking(shape, chunk, nan_share, seed,
                                                           min_valid):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape).astype(np.float32)
    a[rng.random(shape) < nan_share] = np.nan
    out = impute_isolated(_image(a, {"y": chunk[0], "x": chunk[1]}), min_valid).values
    np.testing.assert_allclose(out, _impute_reference(a, min_valid), rtol=1e-6, atol=1e-6)


# --- orbit means ---------------------------------------------------------------------------

def _s1(values_by_scene, orbits, periods):
    vv = np.stack(values_by_scene).astype(np.float32)
    n, ny, nx = vv.shape
    coords = {"time": pd.date_range("2024-03-01", periods=n, freq="6D"),
              **_grid_coords(ny, nx)}
    ds = xr.Dataset({"vv": (("time", "y", "x"), vv), "vh": (("time", "y", "x"), vv / 5)},
                    coords=coords)
    return ds.assign_coords(orbit_state=("time", orbits), period=("time", periods),
                            relative_orbit=("time", [64 if o == "ascending" else 71
                                                     for o in orbits])).chunk({"y": 4, "x": 4})


def test_orbit_means_average_in_linear_power_then_fuse():
    ny = nx = 6
    a1, a2 = np.full((ny, nx), 0.1), np.full((ny, nx), 0.3)
    d1 = np.full((ny, nx), 0.05)
    d1[0, :] = np.nan                 # descending has no data on the first row
    post = np.full((ny, nx), 9.0)     # another period: must not leak in
    s1 = _s1([a1, a2, d1, post], ["ascending", "ascending", "descending", "ascending"],
             ["pre", "pre", "pre", "post"])
    means = orbit_means(s1, "pre").compute()
    asc = 0.2
    np.testing.assert_allclose(means.vv_asc.values, 10 * np.log10(asc), rtol=1e-6)
    np.testing.assert_allclose(means.vv_desc.values[1:], 10 * np.log10(0.05), rtol=1e-6)
    np.testing.assert_allclose(means.vv.values[1:], 10 * np.log10((asc + 0.05) / 2), rtol=1e-6)
    np.testing.assert_allclose(means.vv.values[0], 10 * np.log10(asc), rtol=1e-6)  # asc only
    assert means.vv.attrs["units"] == "dB"
    assert "linear power" in means.vv.attrs["averaging"]


def test_orbit_means_impute_isolated_gaps_in_each_scene():
    a = np.full((7, 7), 0.1)
    a[3, 3] = np.nan
    s1 = _s1([a], ["ascending"], ["pre"])
    means = orbit_means(s1, "pre").compute()
    assert np.isfinite(means.vv.values).all()
    assert np.isnan(means.vv_desc.values).all()  # no descending scene


def test_a_period_without_radar_is_refused():
    s1 = _s1([np.ones((4, 4))], ["ascending"], ["pre"])
    with pytest.raises(InputError, match="'post'"):
        orbit_means(s1, "post")


# --- terrain encodings ---------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(direction=st.floats(0, 359.9), slope_deg=st.floats(1, 60),
       chunk=st.integers(3, 20))
def test_terrain_encodings_of_planes(direction, slope_deg, chunk):
    # a plane descending towards `direction` (the aspect), with the given slope
    ny, nx = 24, 30
    coords = _grid_coords(ny, nx)
    xx, yy = np.meshgrid(coords["x"], coords["y"])
    gradient = np.tan(np.radians(slope_deg))
    east, north = np.sin(np.radians(direction)), np.cos(np.radians(direction))
    z = 1000.0 - gradient * ((xx - xx.mean()) * east + (yy - yy.mean()) * north)
    dem = xr.DataArray(z, dims=("y", "x"), coords=coords).chunk({"y": chunk, "x": chunk})
    # interior pixels: at the scene edge Horn's method sees the replicated edge row
    enc = terrain_encodings(dem).compute().isel(y=slice(1, -1), x=slice(1, -1))
    np.testing.assert_allclose(enc.sin_slope.values, np.sin(np.radians(slope_deg)), atol=1e-5)
    np.testing.assert_allclose(enc.sin_aspect.values, east, atol=1e-4)
    np.testing.assert_allclose(enc.cos_aspect.values, north, atol=1e-4)


def test_terrain_encodings_do_not_depend_on_chunking():
    rng = np.random.default_rng(1)
    z = np.cumsum(np.cumsum(rng.normal(size=(40, 50)), 0), 1) * 5
    dem = xr.DataArray(z, dims=("y", "x"), coords=_grid_coords(40, 50))
    one = terrain_encodings(dem.chunk({"y": -1, "x": -1})).compute()
    many = terrain_encodings(dem.chunk({"y": 7, "x": 9})).compute()
    xr.testing.assert_identical(one, many)


@settings(max_examples=15, deadline=None)
@given(
    chunk=st.tuples(st.integers(5, 70), st.integers(5, 90)),
    seed=st.integers(0, 2**16),
)
def test_quality_layers_equal_the_whole_scene_trace_for_any_chunking(chunk, seed):
    """Cast shadow is a running maximum along rows: carried across x-chunks, it must decide
    every pixel exactly as the whole-row trace of the simulator's geometry does."""
    from scipy import ndimage

    from sar2ndvi.features import quality_layers
    from sar2ndvi.geometry import ASCENDING, DESCENDING, horn_slope_aspect, layover_shadow

    rng = np.random.default_rng(seed)
    z = (ndimage.gaussian_filter(rng.normal(size=(70, 90)), 4) * 3000 + 800).astype(np.float32)
    dem = xr.DataArray(z, dims=("y", "x"), coords=_grid_coords(70, 90)).chunk(
        {"y": chunk[0], "x": chunk[1]}
    )
    layers = quality_layers(dem, {"ascending": ASCENDING, "descending": DESCENDING}).compute()
    slope, aspect = horn_slope_aspect(z, RES)
    for geometry in (ASCENDING, DESCENDING):
        layover, shadow = layover_shadow(z, RES, geometry, slope, aspect)
        # the terrain is steep enough to test both
        assert shadow.any()
        assert layover.any()
        np.testing.assert_array_equal(layers[f"layover_{geometry.orbit_state}"], layover)
        np.testing.assert_array_equal(layers[f"shadow_{geometry.orbit_state}"], shadow)


# --- target and normalisation ---------------------------------------------------------------

def test_target_is_the_median_of_clear_views():
    values = np.array([[[0.2, np.nan]], [[0.4, np.nan]], [[0.9, np.nan]], [[0.1, 0.5]]],
                      dtype=np.float32)
    coords = {"time": pd.date_range("2024-03-01", periods=4), **_grid_coords(1, 2)}
    s2 = xr.Dataset({"ndvi": (("time", "y", "x"), values)}, coords=coords).assign_coords(
        period=("time", ["pre", "pre", "pre", "post"])).chunk({"time": 1})
    target = ndvi_target(s2, "pre").compute()
    assert target.target.values[0, 0] == pytest.approx(0.4)
    assert np.isnan(target.target.values[0, 1])  # no clear view before the event
    assert target.clear_count.values.tolist() == [[3, 0]]


def test_normalisation_round_trip_and_robustness():
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 2.0, size=(2, 60, 60)).astype(np.float32)
    values[0, :2, :2] = 1e4   # a few wild outliers must not move the statistics
    features = xr.DataArray(values, dims=("band", "y", "x"),
                            coords={"band": ["a", "b"], **_grid_coords(60, 60)}).chunk(
        {"y": 16, "x": 16})
    stats = normalisation_stats(features).compute()
    assert stats.center.sel(band="a").item() == pytest.approx(5.0, abs=0.15)
    assert stats.scale.sel(band="a").item() == pytest.approx(2.0, rel=0.1)
    z = normalise(features, stats)
    back = denormalise(z, stats).compute()
    np.testing.assert_allclose(back.values, values, rtol=1e-5, atol=1e-3)
    inner = z.sel(band="b").values
    assert abs(np.nanmean(inner)) < 0.05
    with pytest.raises(InputError, match="bands"):
        normalise(features.sel(band=["b", "a"]), stats)


def test_feature_specs_are_data():
    spec = variant("orbits4", window=11)
    assert spec.channels == ("vv_asc", "vh_asc", "vv_desc", "vh_desc")
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert FeatureSpec().channels == PAPER_CHANNELS
    for bad in ({"window": 10}, {"window": 1}, {"channels": ("vv", "ndwi")},
                {"channels": ("vv", "vv")}):
        with pytest.raises(InputError):
            FeatureSpec(**bad)
    with pytest.raises(InputError, match="unknown feature variant"):
        variant("paper10")


# --- on a whole (lazy) cube ------------------------------------------------------------------

class _Counter(Callback):
    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _posttask(self, *args, **kwargs):
        self.tasks += 1


def _lazy_cube():
    """A small lazy cube with the structure of `cube.build_cube`'s output."""
    ny, nx, n1, n2 = 48, 56, 6, 4
    coords = _grid_coords(ny, nx)
    rng = da.random.default_rng(0)
    s1 = xr.Dataset({p: (("time", "y", "x"), rng.gamma(4.4, 0.05, (n1, ny, nx),
                                                        chunks=(1, 16, 16)).astype(np.float32))
                     for p in ("vv", "vh")},
                    coords={"time": pd.date_range("2024-03-01", periods=n1, freq="6D"),
                            **coords})
    s1 = s1.assign_coords(orbit_state=("time", ["ascending", "descending"] * 3),
                          relative_orbit=("time", [64, 71] * 3),
                          period=("time", ["pre"] * 4 + ["post"] * 2))
    s2 = xr.Dataset({"ndvi": (("time", "y", "x"), rng.uniform(0, 0.9, (n2, ny, nx),
                                                               chunks=(1, 16, 16)))},
                    coords={"time": pd.date_range("2024-03-02", periods=n2, freq="9D"),
                            **coords}).assign_coords(period=("time", ["pre"] * 3 + ["post"]))
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    dem = xr.Dataset({"elevation": (("y", "x"), da.from_array(
        (1000 + 30 * np.sin(xx / 5.0) * yy).astype(np.float32), chunks=16))}, coords=coords)
    return xr.DataTree.from_dict({"/s1": s1, "/s2": s2, "/dem": dem})


def test_building_the_stack_computes_nothing():
    cube = _lazy_cube()
    with _Counter() as counter:
        tree = build_features(cube, FeatureSpec(window=11))
    assert counter.tasks == 0
    assert isinstance(tree["/pre"].features.data, da.Array)
    assert list(tree["/pre"].features.band.values) == list(PAPER_CHANNELS)
    with _Counter() as counter, dask.config.set(scheduler="threads"):
        tree["/pre"].features.isel(band=0, y=slice(0, 4), x=slice(0, 4)).compute()
    assert counter.tasks > 0


def test_stack_values_and_variants():
    cube = _lazy_cube()
    tree = build_features(cube, variant("paper9+indices", window=11))
    pre = tree["/pre"].to_dataset().compute()
    f = pre.features
    assert f.dtype == np.float32
    assert f.dims == ("band", "y", "x")
    # the local mean channel is the local mean of the VV channel
    from sar2ndvi.localstats import local_mean_std
    mean, std = local_mean_std(f.sel(band="vv").values, 11)
    np.testing.assert_allclose(f.sel(band="vv_mean").values, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.sel(band="vv_std").values, std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f.sel(band="vh_vv_ratio").values,
                               f.sel(band="vh").values - f.sel(band="vv").values, atol=1e-5)
    assert np.nanmax(f.sel(band="rvi").values) <= 4.0
    stats = tree["/normalisation"].to_dataset().compute()
    assert list(stats.band.values) == list(f.band.values)
    assert tree.attrs["sar2ndvi:window"] == 11
    assert set(tree["/quality"].to_dataset().data_vars) == {
        "layover_ascending", "shadow_ascending", "layover_descending", "shadow_descending"}
    four = build_features(cube, variant("orbits4"))
    assert list(four["/post"].features.band.values) == ["vv_asc", "vh_asc", "vv_desc",
                                                        "vh_desc"]
