"""Lazy cubes from the served simulated scene: the grid, the pixels, the engines, errors."""

from __future__ import annotations

import json
from datetime import date

import dask.array as da
import numpy as np
import pytest
import rasterio

from sar2ndvi.catalog import EmptySearchError, select_scenes
from sar2ndvi.cube import SCL_MASKED, build_cube
from sar2ndvi.items import ItemError
from sar2ndvi.recipe import parse_recipe
from sar2ndvi.synth.area import scene_recipe as base_recipe


def scene_recipe(scene, api_url, **overrides):
    """The test scene's recipe, served at `api_url`, with some sections replaced."""
    data = base_recipe(scene, url=api_url, chunk=64).to_dict()
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_recipe(data, origin="test-scene")


@pytest.fixture(scope="module")
def recipe(scene, stac_api):
    return scene_recipe(scene, stac_api.url)


@pytest.fixture(scope="module")
def selection(recipe):
    return select_scenes(recipe)


@pytest.fixture(scope="module")
def cube(recipe, selection):
    return build_cube(recipe, selection)


@pytest.fixture(scope="module")
def computed(cube):
    return cube.compute()


def _window(scene, recipe):
    """Row/col slices of the recipe grid inside the scene's truth grid."""
    g, s = recipe.grid(), scene.grid
    col0 = round((g.transform.c - s.transform.c) / 10.0)
    row0 = round((s.transform.f - g.transform.f) / 10.0)
    return slice(row0, row0 + g.height), slice(col0, col0 + g.width)


def _truth(scene, name, window):
    with rasterio.open(scene.truth(name)) as ds:
        return ds.read(1)[window]


def test_cube_is_lazy_float32_and_on_the_recipe_grid(cube, recipe):
    grid = recipe.grid()
    x, y = grid.coords()
    for path in ("/s1", "/s2", "/dem"):
        ds = cube[path].to_dataset()
        np.testing.assert_array_equal(ds.x.values, x)
        np.testing.assert_array_equal(ds.y.values, y)
        for name, var in ds.data_vars.items():
            assert isinstance(var.data, da.Array), (path, name)
            assert var.dtype == np.float32, (path, name)
            assert var.dims[-2:] == ("y", "x")
            assert var.chunks[-1][0] == 64
            assert var.attrs.get("grid_mapping") == "spatial_ref"
    assert cube["/s1"].vv.dims == ("time", "y", "x")
    assert cube["/dem"].elevation.dims == ("y", "x")


def test_s1_pixels_equal_the_simulated_rasters(computed, scene, recipe, selection):
    window = _window(scene, recipe)
    s1 = computed["/s1"].to_dataset()
    assert list(s1.item_id.values) == [it.id for it in selection.s1_items()]
    for i, item_id in enumerate(s1.item_id.values):
        path = next(p for p in scene.item_paths("sentinel-1-rtc") if p.stem == item_id)
        with rasterio.open(path.parent / "vv.tif") as ds:
            raw = ds.read(1)[window]
        expected = np.where(raw == -32768, np.nan, raw)
        np.testing.assert_array_equal(s1.vv.values[i], expected)
    assert set(s1.orbit_state.values) == {"ascending", "descending"}
    assert set(s1.relative_orbit.values) == {64, 71}
    assert (s1.period.values == "pre").sum() == (s1.period.values == "post").sum() == 6


def test_s2_ndvi_matches_the_truth_where_the_view_is_clear(computed, scene, recipe):
    window = _window(scene, recipe)
    truth = {p: _truth(scene, f"ndvi_{p}", window) for p in ("pre", "post")}
    s2 = computed["/s2"].to_dataset()
    checked = 0
    for i in range(s2.sizes["time"]):
        ndvi = s2.ndvi.values[i]
        clear = ~np.isnan(ndvi)
        masked = np.isin(s2.scl.values[i], SCL_MASKED)
        assert np.isnan(ndvi[masked]).all()
        assert np.isnan(s2.B04.values[i][masked]).all()
        if clear.mean() > 0.3:
            err = np.abs(ndvi - truth[str(s2.period.values[i])])[clear]
            assert np.median(err) < 0.02, s2.item_id.values[i]
            checked += 1
    assert checked >= 3


def test_harmonisation_goes_by_processing_baseline(computed):
    s2 = computed["/s2"].to_dataset()
    pre = s2.sel(time=s2.period == "pre")
    old = pre.sel(time=pre.processing_baseline == "03.01").B08
    new = pre.sel(time=pre.processing_baseline == "05.10").B08
    assert old.sizes["time"]
    assert new.sizes["time"]
    # the same ground in both baselines: no 0.1 reflectance step between them
    diff = (old.median("time") - new.median("time")).values
    assert abs(np.nanmedian(diff)) < 0.01


def test_scl_is_the_20m_classification_upsampled(computed, scene, recipe):
    s2 = computed["/s2"].to_dataset()
    item_id = str(s2.item_id.values[0])
    path = next(p for p in scene.item_paths("sentinel-2-l2a") if p.stem == item_id)
    with rasterio.open(path.parent / "SCL.tif") as ds:
        scl20 = ds.read(1)
    rows, cols = _window(scene, recipe)
    expected = np.repeat(np.repeat(scl20, 2, 0), 2, 1)[rows, cols]
    np.testing.assert_array_equal(s2.scl.values[0], expected.astype(np.float32))


def test_dem_matches_the_terrain(computed, scene, recipe):
    truth = _truth(scene, "elevation", _window(scene, recipe))
    elevation = computed["/dem"].elevation.values
    assert not np.isnan(elevation).any()
    assert np.median(np.abs(elevation - truth)) < 10.0


def test_stackstac_and_odc_give_the_same_pixels(recipe, selection, computed):
    odc = build_cube(recipe, selection, engine="odc").compute()
    upsampled = {"B05", "B06", "B07", "B8A", "B11", "B12"}  # 20 m bands, bilinear to 10 m
    for path in ("/s1", "/s2"):
        a, b = computed[path].to_dataset(), odc[path].to_dataset()
        assert set(a.data_vars) == set(b.data_vars)
        for name in a.data_vars:
            if name in upsampled:
                # both interpolate bilinearly but sample the 20 m grid at slightly different
                # float positions: within one L2A digital number (1e-4 reflectance)
                np.testing.assert_allclose(b[name].values, a[name].values, rtol=0, atol=1e-4,
                                           err_msg=f"{path}/{name}")
                assert np.array_equal(np.isnan(a[name].values), np.isnan(b[name].values))
            else:
                # read on their native grid (SCL by nearest neighbour): bit for bit
                np.testing.assert_array_equal(b[name].values, a[name].values,
                                              err_msg=f"{path}/{name}")
    # The DEM is warped from EPSG:4326: both engines call GDAL's bilinear warper, whose
    # coordinate transforms round differently in float; they agree to 5e-5 of the value
    # (5 cm in 1000 m, far below the DEM's own accuracy).
    a, b = computed["/dem"].elevation.values, odc["/dem"].elevation.values
    np.testing.assert_allclose(b, a, rtol=5e-5, atol=0)


def test_provenance_attributes(cube, selection, recipe):
    attrs = cube.attrs
    assert attrs["sar2ndvi:items"]["s1"] == [it.id for it in selection.s1_items()]
    assert attrs["sar2ndvi:recipe"]["name"] == recipe.name
    assert attrs["sar2ndvi:skipped"] == []


def _with_broken_href(selection, item_index=0):
    broken = selection.s1_items()[item_index].clone()
    broken.assets["vv"].href = "file:///no/such/file/vv.tif"
    rest = [it for it in selection.s1_items() if it.id != broken.id]
    clone = type(selection)(s1={("pre", "ascending"): [broken, *rest]}, s2=selection.s2,
                            dem=selection.dem)
    return clone, broken.id


def test_a_missing_cog_names_item_and_asset(recipe, selection):
    broken, item_id = _with_broken_href(selection)
    with pytest.raises(ItemError, match=rf"item {item_id} asset vv: cannot read file:///no/such"):
        build_cube(recipe, broken)


def test_a_missing_cog_can_be_skipped_and_is_recorded(recipe, selection):
    broken, item_id = _with_broken_href(selection)
    cube = build_cube(recipe, broken, on_error="skip")
    assert item_id not in cube["/s1"].item_id.values
    assert cube["/s1"].sizes["time"] == len(selection.s1_items()) - 1
    skipped = cube.attrs["sar2ndvi:skipped"]
    assert skipped[0]["item"] == item_id
    assert skipped[0]["asset"] == "vv"


def test_an_empty_search_names_collection_and_window(scene, stac_api):
    recipe = scene_recipe(scene, stac_api.url, event={
        "date": date(2024, 4, 3), "pre": [date(2023, 1, 1), date(2023, 2, 1)],
        "post": [date(2024, 4, 3), date(2024, 5, 9)]})
    with pytest.raises(EmptySearchError, match=r"'sentinel-1-rtc'.*pre-event window "
                                                r"2023-01-01T00:00:00Z/2023-02-01"):
        select_scenes(recipe)


def _projection_as(item, version):
    """The item with its projection code spelled as extension v1 (proj:epsg) or v2."""
    out = item.clone()
    for fields in [out.properties] + [a.extra_fields for a in out.assets.values()]:
        code = fields.pop("proj:code", None) or (
            f"EPSG:{fields['proj:epsg']}" if "proj:epsg" in fields else None)
        fields.pop("proj:epsg", None)
        if code is not None:
            if version == 1:
                fields["proj:epsg"] = int(code.split(":")[1])
            else:
                fields["proj:code"] = code
    return out


@pytest.mark.parametrize("version", [1, 2])
def test_projection_extension_v1_and_v2_give_the_same_cube(recipe, selection, computed,
                                                           version):
    # pystac >= 1.12 rewrites proj:epsg as proj:code on reading; stackstac reads only
    # proj:epsg. Both spellings must give the same cube.
    converted = type(selection)(
        s1={k: [_projection_as(it, version) for it in v] for k, v in selection.s1.items()},
        s2={k: [_projection_as(it, version) for it in v] for k, v in selection.s2.items()},
        dem=[_projection_as(it, version) for it in selection.dem])
    props = converted.s1_items()[0].properties
    assert ("proj:epsg" in props) == (version == 1)
    assert ("proj:code" in props) == (version == 2)
    again = build_cube(recipe, converted).compute()
    np.testing.assert_array_equal(again["/s1"].vv.values, computed["/s1"].vv.values)
    np.testing.assert_array_equal(again["/s2"].B05.values, computed["/s2"].B05.values)
    np.testing.assert_array_equal(again["/dem"].elevation.values,
                                  computed["/dem"].elevation.values)


def test_earth_search_asset_keys_and_declared_scaling(recipe, selection, computed):
    rename = {"B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
              "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08",
              "B11": "swir16", "B12": "swir22", "SCL": "scl", "B01": "coastal", "B09": "nir09"}

    def earth_search(item):
        out = item.clone()
        offset = -0.1 if out.properties["s2:processing_baseline"] >= "04.00" else 0.0
        assets = {}
        for key, asset in out.assets.items():
            if key != "SCL":
                asset.extra_fields["raster:bands"] = [
                    {"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": offset}]
            assets[rename[key]] = asset
        out.assets = assets
        out.properties.pop("s2:processing_baseline")  # the declared scaling must suffice
        return out

    converted = type(selection)(s1=selection.s1, dem=selection.dem,
                                s2={k: [earth_search(it) for it in v]
                                    for k, v in selection.s2.items()})
    again = build_cube(recipe, converted).compute()
    np.testing.assert_allclose(again["/s2"].B04.values, computed["/s2"].B04.values, atol=1e-6)
    np.testing.assert_allclose(again["/s2"].ndvi.values, computed["/s2"].ndvi.values, atol=1e-5)


def test_sentinel1_grd_is_refused(recipe, selection):
    grd = selection.s1_items()[0].clone()
    grd.collection_id = "sentinel-1-grd"
    for key in [k for k in grd.properties if k.startswith("proj:")]:
        grd.properties.pop(key)
    clone = type(selection)(s1={("pre", "ascending"): [grd]}, s2=selection.s2,
                            dem=selection.dem)
    with pytest.raises(ItemError, match=r"radar geometry.*terrain-corrected.*sentinel-1-rtc"):
        build_cube(recipe, clone)


def test_json_items_from_the_api_keep_absolute_hrefs(selection, scene):
    href = selection.s1_items()[0].assets["vv"].href
    assert href.startswith(scene.path.resolve().as_uri())
    assert json.dumps(selection.s1_items()[0].to_dict())
