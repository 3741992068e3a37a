"""Broken rasters behind real STAC items: a truncated COG, a COG in another CRS than its item
declares, and an asset whose URL answers 404 (a real loopback HTTP server read by GDAL).

With ``on_error="raise"`` the error names the item and the asset (and what is wrong with
it); with ``on_error="skip"`` the cube is built without the item, the stored cube records the
skip in its root attributes, and every other pixel is what a clean build gives. (A missing
local file and a file of random bytes are in test_cube.py and test_catalog_sources.py.)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from sar2ndvi import store
from sar2ndvi.catalog import select_scenes
from sar2ndvi.cube import build_cube
from sar2ndvi.items import ItemError
from sar2ndvi.synth.area import scene_recipe
from tests.faults_support import FileServer

FAULTS = ("truncated", "wrong-crs", "http-404")


@pytest.fixture(scope="module")
def recipe(scene, stac_api):
    return scene_recipe(scene, url=stac_api.url, chunk=64)


@pytest.fixture(scope="module")
def selection(recipe):
    return select_scenes(recipe)


@pytest.fixture(scope="module")
def clean_s1(recipe, selection):
    return build_cube(recipe, selection)["/s1"].to_dataset().compute()


@pytest.fixture
def files_server(scene, selection):
    """The scene's files over HTTP (in a child process), the vh of S1 item 1 answering 404."""
    vh = _local(selection.s1_items()[1].assets["vh"].get_absolute_href())
    missing = vh.resolve().relative_to(scene.path.resolve()).as_posix()
    with FileServer(scene.path, missing=[missing]) as server:
        yield server


def _local(href: str) -> Path:
    return Path(href.removeprefix("file://"))


def _break(kind, selection, folder, server):
    """A copy of `selection` whose second Sentinel-1 item has one broken asset; returns
    (selection, item id, asset key, a regex for what the error says about the asset)."""
    items = selection.s1_items()
    item = items[1].clone()
    for asset in item.assets.values():
        asset.href = asset.get_absolute_href()
    vv = _local(item.assets["vv"].href)
    if kind == "truncated":  # an interrupted download: the header opens, the pixels do not
        bad = folder / "vv-truncated.tif"
        data = vv.read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
        item.assets["vv"].href = bad.as_uri()
        kept = len(data) * 2 // 3
        asset, said = "vv", rf"{re.escape(bad.as_uri())}: the file is truncated: {kept} bytes"
    elif kind == "wrong-crs":  # the same pixels, labelled with the next UTM zone
        bad = folder / "vv-wrong-crs.tif"
        with rasterio.open(vv) as src:
            profile, pixels = src.profile, src.read()
        profile["crs"] = "EPSG:32612"
        with rasterio.open(bad, "w", **profile) as dst:
            dst.write(pixels)
        item.assets["vv"].href = bad.as_uri()
        asset, said = "vv", r"the file is in EPSG:32612 but its item declares EPSG:32611"
    else:  # every asset over HTTP; vh answers 404 (see files_server)
        for key in ("vv", "vh"):
            item.assets[key].href = server.url_of(_local(item.assets[key].href))
        asset, said = "vh", rf"cannot read {re.escape(item.assets['vh'].href)}: .*404"
    rest = [it for it in items if it.id != item.id]
    broken = type(selection)(
        s1={("pre", "ascending"): [item, *rest]}, s2=selection.s2, dem=selection.dem
    )
    return broken, item.id, asset, said


@pytest.mark.parametrize("kind", FAULTS)
def test_the_error_names_the_item_and_the_asset(kind, recipe, selection, tmp_path, files_server):
    broken, item_id, asset, said = _break(kind, selection, tmp_path, files_server)
    with pytest.raises(ItemError, match=rf"^item {item_id} asset {asset}: .*{said}") as info:
        build_cube(recipe, broken)
    assert "on_error='skip'" in str(info.value)  # and says what to do


@pytest.mark.parametrize("kind", FAULTS)
def test_skip_builds_without_it_and_the_store_records_it(
    kind, recipe, selection, clean_s1, tmp_path, files_server
):
    broken, item_id, asset, said = _break(kind, selection, tmp_path, files_server)
    cube = build_cube(recipe, broken, on_error="skip")
    # /s2 left out to keep the test quick: the skip record lives in the root attributes
    del cube["s2"]
    path = store.write(cube, tmp_path / "cube.zarr", progress=False)

    stored = store.open(path)
    skipped = stored.attrs["sar2ndvi:skipped"]
    assert [(s["item"], s["asset"]) for s in skipped] == [(item_id, asset)]
    assert re.search(said, skipped[0]["reason"]), skipped[0]["reason"]
    s1 = stored["/s1"].to_dataset()
    kept = [i for i in clean_s1["item_id"].values if i != item_id]
    assert list(s1["item_id"].values) == kept
    expected = clean_s1.sel(time=clean_s1["item_id"] != item_id)
    for pol in ("vv", "vh"):
        np.testing.assert_array_equal(s1[pol].values, expected[pol].values)
    assert stored.attrs["sar2ndvi:items"]["s1"] == kept


def test_http_assets_that_answer_are_read_like_local_files(
    recipe, selection, clean_s1, files_server
):
    # the control for the 404 case: the same item over HTTP, nothing missing
    items = selection.s1_items()
    item = items[0].clone()
    for key in ("vv", "vh"):
        local = _local(item.assets[key].get_absolute_href())
        item.assets[key].href = files_server.url_of(local)
    one = type(selection)(s1={("pre", "ascending"): [item]}, s2=selection.s2, dem=selection.dem)
    s1 = build_cube(recipe, one)["/s1"].to_dataset().compute()
    for pol in ("vv", "vh"):
        np.testing.assert_array_equal(s1[pol].values, clean_s1[pol].sel(time=s1.time).values)
    assert np.isfinite(s1["vv"].values).mean() > 0.5


def test_a_truncated_cog_found_only_at_write_time_is_not_mistaken_for_complete(
    recipe, selection, tmp_path
):
    # A file that passes the check and breaks later (truncated after the cube was built):
    # the write stops with a StoreError and the store is not complete.
    item = selection.s1_items()[0].clone()
    copy = tmp_path / "vh.tif"
    shutil.copy(_local(item.assets["vh"].get_absolute_href()), copy)
    item.assets["vh"].href = copy.as_uri()
    one = type(selection)(s1={("pre", "ascending"): [item]}, s2=selection.s2, dem=selection.dem)
    cube = build_cube(recipe, one)
    copy.write_bytes(copy.read_bytes()[:2000])
    out = tmp_path / "cube.zarr"
    with pytest.raises(store.StoreError, match=r"vh\.tif.*the store is incomplete"):
        store.write(cube, out, progress=False)
    assert not store.is_complete(out)
    with pytest.raises(store.IncompleteStoreError):
        store.open(out)
