"""Features of a simulated scene, from its served STAC API to a stored feature store."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from scipy import ndimage

from sar2ndvi import store
from sar2ndvi.catalog import select_scenes
from sar2ndvi.cli import main
from sar2ndvi.cube import build_cube
from sar2ndvi.features import FeatureSpec, build_features, normalise, stored_stats
from sar2ndvi.synth.area import scene_recipe
from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.scene import simulate
from sar2ndvi.synth.server import serve_scene


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A steeper 256 px scene (layover and shadow in both orbits), its cube and features."""
    root = tmp_path_factory.mktemp("features-scene")
    scene = simulate(SceneConfig(seed=3, size=(256, 256)), root / "scene", progress=False)
    with serve_scene(scene) as api:
        recipe = scene_recipe(scene, url=api.url, chunk=96)
        selection = select_scenes(recipe)
    cube_path = root / "cube.zarr"
    store.write(build_cube(recipe, selection), cube_path, progress=False)
    features_path = root / "features.zarr"
    tree = build_features(store.open(cube_path), FeatureSpec(window=11))
    store.write(tree, features_path, progress=False)
    return scene, recipe, cube_path, features_path


def _truth(scene, recipe, name):
    grid, s = recipe.grid(), scene.grid
    col0 = round((grid.transform.c - s.transform.c) / 10.0)
    row0 = round((s.transform.f - grid.transform.f) / 10.0)
    with rasterio.open(scene.truth(name)) as ds:
        return ds.read(1)[row0:row0 + grid.height, col0:col0 + grid.width]


@pytest.mark.parametrize("kind", ["layover", "shadow"])
def test_quality_layer_matches_the_simulators_mask(stored, kind):
    # The quality layer comes from the cube's DEM, a 30 m product of the 10 m terrain the
    # simulator used: it misses some of the steepest pixels, but flags nothing spurious.
    scene, recipe, _, features_path = stored
    quality = store.open(features_path)["/quality"]
    hits = flagged = near_truth_flagged = truth_total = 0
    for orbit in ("ascending", "descending"):
        truth = _truth(scene, recipe, f"{kind}_{orbit}").astype(bool)
        mine = quality[f"{kind}_{orbit}"].values.astype(bool)
        near_truth = ndimage.binary_dilation(truth, iterations=2)
        near_mine = ndimage.binary_dilation(mine, iterations=2)
        truth_total += truth.sum()
        hits += near_mine[truth].sum()
        flagged += mine.sum()
        near_truth_flagged += near_truth[mine].sum()
    assert truth_total >= 20     # enough pixels for the rates to mean something
    assert flagged > 0
    assert near_truth_flagged / flagged >= 0.9   # precision, within 2 px
    assert hits / truth_total >= 0.6             # recall, within 2 px


def test_target_is_the_clear_sky_ndvi(stored):
    scene, recipe, _, features_path = stored
    pre = store.open(features_path)["/pre"].to_dataset()
    target = pre["target"].values
    truth = _truth(scene, recipe, "ndvi_pre")
    valid = np.isfinite(target)
    assert valid.mean() > 0.9
    assert np.median(np.abs(target[valid] - truth[valid])) < 0.02
    assert (pre["clear_count"].values[~valid] == 0).all()


def test_radar_features_carry_the_vegetation_signal(stored):
    scene, recipe, _, features_path = stored
    f = store.open(features_path)["/pre"]["features"]
    truth = _truth(scene, recipe, "ndvi_pre")
    vh = f.sel(band="vh").values
    ok = np.isfinite(vh) & np.isfinite(truth)
    # VH rises with vegetation, but soil moisture, speckle and cover type keep it far
    # from a function of NDVI
    r = np.corrcoef(vh[ok], truth[ok])[0, 1]
    assert 0.3 < r < 0.98
    assert f.dtype == np.float32


def test_stored_statistics_normalise_the_training_area(stored):
    _, _, _, features_path = stored
    tree = store.open(features_path)
    stats = stored_stats(tree)
    z = normalise(tree["/pre"]["features"], stats).values
    for i, band in enumerate(stats.band.values):
        values = z[i][np.isfinite(z[i])]
        assert abs(np.median(values)) < 0.5, band
        assert 0.5 < np.std(values) < 2.0, band
    assert tree.attrs["sar2ndvi:window"] == 11
    assert tree.attrs["sar2ndvi:variant"] == "paper9"


def test_gdal_opens_the_feature_store(stored):
    _, recipe, _, features_path = stored
    with rasterio.open(f'ZARR:"{features_path}":/pre/features') as ds:
        assert ds.count == 9
        assert ds.crs.to_epsg() == 32611
        assert ds.transform == recipe.grid().transform


def test_cli_features_records_window_and_variant(stored, tmp_path):
    _, _, cube_path, _ = stored
    out = tmp_path / "f.zarr"
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(main, ["features", str(cube_path), "--window", "13",
                                  "--variant", "orbits4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tree = store.open(out)
    assert tree.attrs["sar2ndvi:window"] == 13
    assert list(tree["/pre"]["features"].band.values) == ["vv_asc", "vh_asc", "vv_desc",
                                                          "vh_desc"]
    again = runner.invoke(main, ["features", str(cube_path), "--out", str(out)])
    assert "reused" in again.output
    bad = runner.invoke(main, ["features", str(cube_path), "--window", "12", "--out",
                               str(tmp_path / "g.zarr")])
    assert bad.exit_code == 2
    assert "window 12" in bad.output


def test_the_three_pass_build_equals_the_one_graph_build(stored, tmp_path):
    from sar2ndvi.features import write_features

    _, _, cube_path, one_graph = stored
    out = tmp_path / "three-pass.zarr"
    write_features(store.open(cube_path), str(out), FeatureSpec(window=11), progress=False)
    assert store.is_complete(out)
    assert not (tmp_path / "three-pass.zarr.stage1").exists()
    a, b = store.open(one_graph), store.open(out)
    for group in ("/pre", "/post", "/quality"):
        xr_a, xr_b = a[group].to_dataset().compute(), b[group].to_dataset().compute()
        for name in xr_a.data_vars:
            np.testing.assert_array_equal(xr_b[name].values, xr_a[name].values,
                                          err_msg=f"{group}/{name}")
    sa, sb = stored_stats(a).compute(), stored_stats(b).compute()
    np.testing.assert_allclose(sb.center.values, sa.center.values, rtol=1e-6)
    np.testing.assert_allclose(sb.scale.values, sa.scale.values, rtol=1e-6)
    assert b.attrs["sar2ndvi:window"] == 11
