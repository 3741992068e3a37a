"""The cube stored to Zarr: GDAL and xarray read back the same grid and pixels."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from sar2ndvi import store
from sar2ndvi.catalog import select_scenes
from sar2ndvi.cube import build_cube
from sar2ndvi.synth.area import scene_recipe


@pytest.fixture(scope="module")
def stored(scene, stac_api, tmp_path_factory):
    recipe = scene_recipe(scene, url=stac_api.url, chunk=64)
    cube = build_cube(recipe, select_scenes(recipe))
    path = tmp_path_factory.mktemp("cube") / "cube.zarr"
    store.write(cube, path, progress=False)
    return recipe, cube, path


@pytest.mark.parametrize("variable", ["/s1/vv", "/s2/ndvi", "/dem/elevation"])
def test_gdal_reads_the_cube_grid(stored, variable):
    recipe, cube, path = stored
    grid = recipe.grid()
    with rasterio.open(f'ZARR:"{path}":{variable}') as ds:
        assert ds.crs.to_epsg() == grid.crs.to_epsg()
        assert ds.transform == grid.transform
        assert (ds.height, ds.width) == grid.shape
        group, name = variable.rsplit("/", 1)
        expected = cube[group][name].values
        first = expected[0] if expected.ndim == 3 else expected
        np.testing.assert_array_equal(ds.read(1), first)


def test_xarray_reads_back_the_same_cube(stored):
    _, cube, path = stored
    back = store.open(path)
    for group in ("/s1", "/s2", "/dem"):
        xr.testing.assert_identical(back[group].to_dataset().compute(),
                                    cube[group].to_dataset().compute())
    assert back.attrs["sar2ndvi:items"] == cube.attrs["sar2ndvi:items"]
    assert back.attrs[store.COMPLETE_ATTR] is True


def test_rioxarray_sees_the_crs_and_transform(stored):
    recipe, _, path = stored
    ds = xr.open_dataset(path, group="s2", engine="zarr")
    assert ds.rio.crs.to_epsg() == 32611
    assert Affine(*ds.rio.transform()[:6]) == recipe.grid().transform
