"""The simulated STAC metadata validates and looks like the real Planetary Computer items."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from pystac.extensions.eo import EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.extensions.sar import SarExtension
from pystac.extensions.sat import SatExtension

from sar2ndvi.synth.cog import multihash_sha256
from sar2ndvi.synth.grid import Grid
from sar2ndvi.synth.server import rustac_executable
from sar2ndvi.synth.stac import mgrs_tile
from tests.support import load_fixture

FIXTURE_OF = {
    "sentinel-1-rtc": "sentinel-1-rtc",
    "sentinel-2-l2a": "sentinel-2-l2a",
    "cop-dem-glo-30": "cop-dem-glo-30",
}


def _items(scene, collection):
    return [json.loads(p.read_text()) for p in scene.item_paths(collection)]


def _rustac_validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [rustac_executable(), "validate", str(path)], capture_output=True, text=True, timeout=60
    )


def test_items_and_collections_pass_the_core_stac_schemas(scene, tmp_path):
    # rustac validates against the STAC core and GeoJSON schemas it bundles. Extension
    # schemas would be fetched from the network, which tests may not use, so they are
    # checked below through pystac's typed extension accessors and the real fixtures.
    documents = [scene.catalog] + [
        scene.collection_dir(c) / "collection.json" for c in scene.manifest["collections"]
    ]
    documents += scene.item_paths()
    assert len(documents) > 20
    for i, path in enumerate(documents):
        doc = json.loads(path.read_text())
        doc["stac_extensions"] = []
        doc["links"] = [link for link in doc.get("links", []) if link["rel"] != "root"]
        copy = tmp_path / f"{i}.json"
        copy.write_text(json.dumps(doc))
        result = _rustac_validate(copy)
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"


def test_a_broken_item_fails_validation(scene, tmp_path):
    # The validator is not a rubber stamp: an item without a geometry is refused.
    doc = json.loads(scene.item_paths("sentinel-1-rtc")[0].read_text())
    doc["stac_extensions"] = []
    doc.pop("geometry")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert _rustac_validate(bad).returncode != 0


@pytest.mark.parametrize("collection", list(FIXTURE_OF))
def test_same_asset_keys_property_names_and_types_as_the_real_items(scene, collection):
    real = load_fixture(FIXTURE_OF[collection])
    real_props = {k: type(v) for it in real for k, v in it["properties"].items()}
    real_assets = {k for it in real for k in it["assets"]}
    real_data_assets = {
        k for it in real for k, a in it["assets"].items() if "data" in a.get("roles", [])
    }
    real_extensions = {e for it in real for e in it["stac_extensions"]}
    for item in _items(scene, collection):
        props = item["properties"]
        assert set(props) == set(real_props), collection
        for key, value in props.items():
            expected = real_props[key]
            if expected is float and isinstance(value, int):
                continue  # JSON numbers: 0.0 may be written as 0
            assert isinstance(value, expected), (key, value, expected)
        assert set(item["assets"]) <= real_assets
        simulated_data = {k for k, a in item["assets"].items() if "data" in a["roles"]}
        # every real raster we simulate: S2 skips only the derived AOT, WVP and TCI
        assert simulated_data <= real_data_assets
        assert set(item["stac_extensions"]) == real_extensions
        assert item["collection"] == collection


def test_s2_has_every_spectral_band_and_scl_at_native_resolution(scene):
    real = load_fixture("sentinel-2-l2a")[0]["assets"]
    for item in _items(scene, "sentinel-2-l2a"):
        bands = {k for k in item["assets"] if k.startswith("B")} | {"SCL"}
        assert bands == {k for k in real if k.startswith("B")} | {"SCL"}
        for key, asset in item["assets"].items():
            assert asset["gsd"] == real[key]["gsd"], key
            assert asset["title"] == real[key]["title"], key
            if "eo:bands" in real[key]:
                assert asset["eo:bands"] == real[key]["eo:bands"], key


def test_extension_fields_parse_with_pystac(scene):
    for path in scene.item_paths("sentinel-1-rtc"):
        item = pystac.Item.from_file(str(path))
        sar = SarExtension.ext(item)
        assert sar.instrument_mode == "IW"
        assert [getattr(p, "value", p) for p in sar.polarizations] == ["VV", "VH"]
        assert sar.looks_equivalent_number == pytest.approx(4.4)
        orbit = SatExtension.ext(item).orbit_state
        assert getattr(orbit, "value", orbit) in ("ascending", "descending")
        assert ProjectionExtension.ext(item).epsg == 32611
        for key in ("vv", "vh"):
            bands = RasterExtension.ext(item.assets[key]).bands
            assert bands[0].nodata == -32768
            assert getattr(bands[0].data_type, "value", bands[0].data_type) == "float32"
    for path in scene.item_paths("sentinel-2-l2a"):
        item = pystac.Item.from_file(str(path))
        cloud = EOExtension.ext(item).cloud_cover
        assert 0 <= cloud <= 100
        assert EOExtension.ext(item.assets["B04"]).bands[0].common_name == "red"


def test_asset_metadata_matches_the_rasters(scene):
    for path in scene.item_paths():
        item = json.loads(path.read_text())
        epsg = item["properties"]["proj:epsg"]
        for key, asset in item["assets"].items():
            raster = path.parent / asset["href"]
            with rasterio.open(raster) as ds:
                assert ds.crs.to_epsg() == epsg, raster
                assert ds.driver == "GTiff"
                assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", raster
                meta = asset if "proj:transform" in asset else item["properties"]
                assert Affine(*meta["proj:transform"][:6]) == ds.transform, (path, key)
                assert meta["proj:shape"] == [ds.height, ds.width], (path, key)
            if "file:checksum" in asset:
                assert asset["file:checksum"] == multihash_sha256(raster)
                assert asset["file:size"] == raster.stat().st_size


def test_s2_percentages_are_consistent_with_the_scl_raster(scene):
    for path in scene.item_paths("sentinel-2-l2a"):
        item = json.loads(path.read_text())
        p = item["properties"]
        with rasterio.open(path.parent / item["assets"]["SCL"]["href"]) as ds:
            scl = ds.read(1)
        valid = scl != 0
        assert p["eo:cloud_cover"] == pytest.approx(
            np.isin(scl[valid], [8, 9, 10]).mean() * 100, abs=1e-3
        )
        assert p["s2:vegetation_percentage"] == pytest.approx(
            (scl[valid] == 4).mean() * 100, abs=1e-3
        )
        classes = [
            p[k]
            for k in (
                "s2:water_percentage",
                "s2:snow_ice_percentage",
                "s2:vegetation_percentage",
                "s2:thin_cirrus_percentage",
                "s2:cloud_shadow_percentage",
                "s2:unclassified_percentage",
                "s2:dark_features_percentage",
                "s2:not_vegetated_percentage",
                "s2:high_proba_clouds_percentage",
                "s2:medium_proba_clouds_percentage",
                "s2:saturated_defective_pixel_percentage",
            )
        ]
        assert sum(classes) == pytest.approx(100.0, abs=1e-3)
        cloud = (
            p["s2:thin_cirrus_percentage"]
            + p["s2:high_proba_clouds_percentage"]
            + p["s2:medium_proba_clouds_percentage"]
        )
        assert p["eo:cloud_cover"] == pytest.approx(cloud, abs=1e-3)


def test_s2_baselines_are_mixed_and_not_tied_to_dates(scene):
    by_period = {"pre": set(), "post": set()}
    event = scene.manifest["event"]["date"]
    for item in _items(scene, "sentinel-2-l2a"):
        period = "pre" if item["properties"]["datetime"] < event else "post"
        by_period[period].add(item["properties"]["s2:processing_baseline"])
        assert (
            f"N{item['properties']['s2:processing_baseline']}"
            in item["properties"]["s2:granule_id"]
        )
    assert "03.01" in by_period["pre"]
    assert "05.10" in by_period["post"]


def test_dem_tiles_are_one_arcsecond_in_geographic_coordinates(scene):
    items = _items(scene, "cop-dem-glo-30")
    assert items
    for item in items:
        t = item["properties"]["proj:transform"]
        assert item["properties"]["proj:epsg"] == 4326
        assert t[0] == pytest.approx(1 / 3600)
        assert t[4] == pytest.approx(-1 / 3600)
        # pixel centres on whole arc-seconds, as in Copernicus tiles
        assert (t[2] + t[0] / 2) * 3600 == pytest.approx(round((t[2] + t[0] / 2) * 3600))
        assert item["id"].startswith("Copernicus_DSM_COG_10_N34_00_W1")


def _fixture_tile_grid(item: dict) -> Grid:
    asset = item["assets"]["B02"]
    t = asset["proj:transform"]
    rows, cols = asset["proj:shape"]
    return Grid.from_origin(item["properties"]["proj:epsg"], t[2], t[5], t[0], cols, rows)


def test_mgrs_tile_names_agree_with_real_items():
    for item in load_fixture("sentinel-2-l2a"):
        assert mgrs_tile(_fixture_tile_grid(item)) == item["properties"]["s2:mgrs_tile"]


def test_s1_ids_look_like_real_ids(scene):
    real = load_fixture("sentinel-1-rtc")[0]["id"]
    for item in _items(scene, "sentinel-1-rtc"):
        assert len(item["id"]) == len(real)
        assert item["id"].split("_")[:4] == real.split("_")[:4]
        assert item["id"].endswith("_rtc")
        start = item["properties"]["start_datetime"].replace("-", "").replace(":", "")[:15]
        assert item["id"].split("_")[4] == start
        orbit = item["properties"]["sat:absolute_orbit"]
        assert (orbit - 73) % 175 + 1 == item["properties"]["sat:relative_orbit"]


def test_hrefs_are_relative_and_resolve(scene):
    for path in scene.item_paths():
        item = json.loads(path.read_text())
        for asset in item["assets"].values():
            assert asset["href"].startswith("./")
            assert (path.parent / asset["href"]).is_file()


def test_static_catalog_opens_with_pystac(scene):
    catalog = pystac.Catalog.from_file(str(scene.catalog))
    items = list(catalog.get_items(recursive=True))
    assert len(items) == sum(scene.manifest["collections"].values())
    assert {c.id for c in catalog.get_collections()} == set(scene.manifest["collections"])
    hrefs = [
        it.assets["vv"].get_absolute_href() for it in items if it.collection_id == "sentinel-1-rtc"
    ]
    assert all(Path(h).is_file() for h in hrefs)
    assert np.all([h.endswith("vv.tif") for h in hrefs])
