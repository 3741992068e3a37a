"""The real Planetary Computer items, with hrefs pointed at local rasters of the same shape
and transform (sparse GeoTIFFs: only the tiles under the test grid hold data)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pystac
import pytest
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window

from sar2ndvi.cube import load_dem, load_s1, load_s2
from sar2ndvi.synth.grid import Grid
from tests.support import load_fixture, write_sparse_raster

CHUNKS = {"x": 64, "y": 64, "time": 1}
EVENT = datetime(2024, 4, 10)


def _item_grid(item: dict, asset: dict | None = None) -> tuple[tuple[int, int], Affine]:
    meta = asset if asset and "proj:shape" in asset else item["properties"]
    return tuple(meta["proj:shape"]), Affine(*meta["proj:transform"][:6])


def _subgrid(transform: Affine, crs: int, row: int, col: int, rows: int, cols: int,
             resolution: float = 10.0) -> Grid:
    west, north = transform * (col, row)
    return Grid.from_origin(CRS.from_epsg(crs), west, north, resolution, cols, rows)


def test_s1_rtc_fixture_items(tmp_path):
    raw = load_fixture("sentinel-1-rtc")[0]
    shape, transform = _item_grid(raw)
    epsg = raw["properties"]["proj:epsg"]
    rng = np.random.default_rng(0)
    row, col, n = 5000, 9000, 96
    values = {}
    for pol in ("vv", "vh"):
        data = rng.gamma(4.4, 0.05 / 4.4, (n, n)).astype(np.float32)
        data[10, 10] = -32768  # an isolated no-data pixel
        data[:, :5] = -32768   # a swath edge
        values[pol] = data
        write_sparse_raster(tmp_path / f"{pol}.tif", shape=shape, transform=transform,
                            crs=f"EPSG:{epsg}", dtype="float32", nodata=-32768,
                            window=Window(col, row, n, n), data=data)
        raw["assets"][pol]["href"] = (tmp_path / f"{pol}.tif").as_uri()
    item = pystac.Item.from_dict(raw)
    grid = _subgrid(transform, epsg, row + 16, col + 16, 64, 72)
    ds = load_s1([item], grid, CHUNKS, event=EVENT)
    assert ds.vv.dtype == np.float32
    assert ds.vv.shape == (1, 64, 72)
    vv = ds.vv.values[0]
    expected = values["vv"][16:80, 16:88]
    expected = np.where(expected == -32768, np.nan, expected)
    np.testing.assert_array_equal(vv, expected)
    assert str(ds.orbit_state.values[0]) == "descending"
    assert int(ds.relative_orbit.values[0]) == 51
    assert str(ds.period.values[0]) == "post"


def _s2_fixture(tmp_path, baseline: str):
    raw = load_fixture("sentinel-2-l2a")[0]
    raw["properties"]["s2:processing_baseline"] = baseline
    epsg = raw["properties"]["proj:epsg"]
    row10, col10, n10 = 4000, 6000, 128
    reflectance = {"B04": 0.05, "B08": 0.35, "B05": 0.12}
    offset = 1000 if baseline >= "04.00" else 0
    for key, refl in reflectance.items():
        asset = raw["assets"][key]
        shape, transform = _item_grid(raw, asset)
        factor = round(transform.a / 10)
        n, r0, c0 = n10 // factor, row10 // factor, col10 // factor
        data = np.full((n, n), round(refl * 10000) + offset, np.uint16)
        write_sparse_raster(tmp_path / f"{key}.tif", shape=shape, transform=transform,
                            crs=f"EPSG:{epsg}", dtype="uint16", nodata=0,
                            window=Window(c0, r0, n, n), data=data)
        asset["href"] = (tmp_path / f"{key}.tif").as_uri()
    scl_asset = raw["assets"]["SCL"]
    shape, transform = _item_grid(raw, scl_asset)
    scl = np.full((n10 // 2, n10 // 2), 4, np.uint8)
    scl[:, 32:] = 9  # a cloud over the right half
    write_sparse_raster(tmp_path / "SCL.tif", shape=shape, transform=transform,
                        crs=f"EPSG:{epsg}", dtype="uint8", nodata=0,
                        window=Window(col10 // 2, row10 // 2, n10 // 2, n10 // 2), data=scl)
    scl_asset["href"] = (tmp_path / "SCL.tif").as_uri()
    _, t10 = _item_grid(raw, raw["assets"]["B02"])
    grid = _subgrid(t10, epsg, row10 + 20, col10 + 20, 64, 80)
    return pystac.Item.from_dict(raw), grid, reflectance


@pytest.mark.parametrize("baseline", ["05.10", "03.01"])
def test_s2_l2a_fixture_items(tmp_path, baseline):
    item, grid, reflectance = _s2_fixture(tmp_path, baseline)
    ds = load_s2([item], grid, CHUNKS, event=EVENT, bands=("B04", "B05", "B08"))
    clear = ds.scl.values[0] == 4
    cloudy = ds.scl.values[0] == 9
    assert clear.any()
    assert cloudy.any()
    for band, refl in reflectance.items():
        values = ds[band].values[0]
        assert ds[band].dtype == np.float32
        np.testing.assert_allclose(values[clear], refl, atol=1e-6)
        assert np.isnan(values[cloudy]).all()
    ndvi = ds.ndvi.values[0]
    np.testing.assert_allclose(ndvi[clear], (0.35 - 0.05) / 0.4, atol=1e-5)
    assert np.isnan(ndvi[cloudy]).all()
    assert str(ds.processing_baseline.values[0]) == baseline


def test_s2_proj_code_and_earth_search_keys(tmp_path):
    item, grid, reflectance = _s2_fixture(tmp_path, "05.10")
    # pystac reads the real item's proj:epsg as projection v2's proj:code
    assert "proj:epsg" not in item.properties
    assert item.properties["proj:code"] == "EPSG:32647"
    rename = {"B04": "red", "B08": "nir", "B05": "rededge1", "SCL": "scl"}
    item.assets = {rename.get(k, k): a for k, a in item.assets.items()}
    for key in ("red", "nir", "rededge1"):
        item.assets[key].extra_fields["raster:bands"] = [{"scale": 0.0001, "offset": -0.1}]
    ds = load_s2([item], grid, CHUNKS, event=EVENT, bands=("B04", "B05", "B08"))
    clear = ds.scl.values[0] == 4
    np.testing.assert_allclose(ds.B08.values[0][clear], reflectance["B08"], atol=1e-6)


def test_cop_dem_fixture_tiles_in_geographic_coordinates(tmp_path):
    raws = load_fixture("cop-dem-glo-30")[:2]
    items = []
    for i, raw in enumerate(raws):
        shape, transform = _item_grid(raw)
        rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
        lon, lat = transform * (cols + 0.5, rows + 0.5)
        elevation = (2800.0 + 100.0 * (lat + 89.5) + 2.0 * (lon + 178.0)).astype(np.float32)
        write_sparse_raster(tmp_path / f"dem{i}.tif", shape=shape, transform=transform,
                            crs="EPSG:4326", dtype="float32", window=Window(0, 0, *shape[::-1]),
                            data=elevation)
        raw["assets"]["data"]["href"] = (tmp_path / f"dem{i}.tif").as_uri()
        items.append(pystac.Item.from_dict(raw))
    # a 1 km square in Antarctic polar stereographic straddling the two tiles (179W)
    to_polar = Transformer.from_crs("EPSG:4326", "EPSG:3031", always_xy=True)
    cx, cy = to_polar.transform(-179.0, -89.5)
    grid = Grid.from_origin(CRS.from_epsg(3031), round(cx) - 500, round(cy) + 500, 10.0, 100,
                            100)
    ds = load_dem(items, grid, CHUNKS)
    assert ds.elevation.dtype == np.float32
    values = ds.elevation.values
    assert not np.isnan(values).any()
    x, y = grid.coords()
    lon, lat = Transformer.from_crs("EPSG:3031", "EPSG:4326", always_xy=True).transform(
        *np.meshgrid(x, y))
    expected = 2800.0 + 100.0 * (lat + 89.5) + 2.0 * (lon + 178.0)
    np.testing.assert_allclose(values, expected, atol=0.5)
