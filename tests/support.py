"""Paths and loaders the tests share (importable as `tests.support`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "stac"


def load_fixture(name: str) -> list[dict]:
    """The real Planetary Computer items of shared/fixtures/stac/<name>-pc.json."""
    path = FIXTURES / f"{name}-pc.json"
    if not path.exists():
        pytest.skip(f"real STAC fixtures not found at {path}")
    return list(json.loads(path.read_text()))


def write_sparse_raster(path, *, shape, transform, crs, dtype, nodata=None, window=None,
                        data=None, blocksize=512):
    """A tiled GeoTIFF of a real product's full shape and transform that stores only the
    tiles of `window` (a rasterio Window) holding `data`: GDAL's SPARSE_OK leaves the other
    tiles unwritten, so a 10980 x 10980 Sentinel-2 band costs a few kilobytes."""
    import rasterio

    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "count": 1,
               "dtype": dtype, "crs": crs, "transform": transform, "nodata": nodata,
               "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
               "sparse_ok": True, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        if window is not None:
            dst.write(data, 1, window=window)
    return path
