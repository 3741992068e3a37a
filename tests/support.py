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


def write_learnable_store(path, *, shape=(160, 192), chunk=64, seed=0, cloud=0.1):
    """A small feature store (the layout of `write_features`) whose NDVI target is a smooth
    function of the features, with a cloud hole and a radar gap: something a model can
    learn in a few steps. Returns the path."""
    import numpy as np
    import xarray as xr
    from scipy import ndimage

    from sar2ndvi import store
    from sar2ndvi.features import PAPER_CHANNELS, FeatureSpec
    from sar2ndvi.store import georeference

    rng = np.random.default_rng(seed)
    ny, nx = shape
    bands = list(PAPER_CHANNELS)
    fields = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 4) * 8
                       for _ in bands]).astype(np.float32)
    fields[0] -= 12.0  # VV-like dB values
    fields[1] -= 18.0
    target = np.tanh(0.15 * (fields[0] + 12) - 0.1 * (fields[1] + 18)
                     + 0.5 * fields[7] / 8).astype(np.float32) * 0.8 + 0.1
    clouds = ndimage.gaussian_filter(rng.normal(size=shape), 8) > np.quantile(
        ndimage.gaussian_filter(rng.normal(size=shape), 8), 1 - cloud)
    target[clouds] = np.nan
    gaps = np.zeros(shape, np.uint8)
    gaps[5:9, 10:14] = 1
    fields[:, gaps == 1] = np.nan
    coords = {"y": 3_800_000.0 - 10.0 * (np.arange(ny) + 0.5),
              "x": 390_000.0 + 10.0 * (np.arange(nx) + 0.5)}

    def period():
        ds = xr.Dataset(
            {"features": (("band", "y", "x"), fields), "target": (("y", "x"), target),
             "gaps": (("y", "x"), gaps),
             "clear_count": (("y", "x"), np.where(clouds, 0, 3).astype(np.int16))},
            coords={**coords, "band": bands},
        )
        return georeference(ds, "EPSG:32611").chunk({"band": 1, "y": chunk, "x": chunk})

    zeros = np.zeros(shape, np.uint8)
    quality = xr.Dataset({f"{k}_{o}": (("y", "x"), zeros) for k in ("layover", "shadow")
                          for o in ("ascending", "descending")}, coords=coords)
    center = np.nanmean(fields.reshape(len(bands), -1), axis=1).astype(np.float32)
    scale = np.nanstd(fields.reshape(len(bands), -1), axis=1).astype(np.float32)
    norm = xr.Dataset({"center": ("band", center), "scale": ("band", scale)},
                      coords={"band": bands})
    tree = xr.DataTree.from_dict({
        "/pre": period(), "/post": period(),
        "/quality": georeference(quality, "EPSG:32611").chunk({"y": chunk, "x": chunk}),
        "/normalisation": norm,
    })
    tree.attrs.update({"sar2ndvi:feature_spec": FeatureSpec().to_dict(),
                       "sar2ndvi:variant": "paper9", "sar2ndvi:window": 19,
                       "sar2ndvi:train_period": "pre"})
    store.write(tree, path, progress=False)
    return path


def write_tiny_checkpoint(path, features, *, seed, **unet):
    """An untrained U-net of width 4, depth 2 (`unet` overrides other UNetConfig fields),
    seeded, with the normalisation of the feature store `features` and 32 / 16 px
    patches, saved as a checkpoint at `path`: enough to predict. Returns the path."""
    import torch

    from sar2ndvi import store
    from sar2ndvi.checkpoint import Checkpoint, save_checkpoint
    from sar2ndvi.features import PAPER_CHANNELS
    from sar2ndvi.model import UNet, UNetConfig
    from sar2ndvi.patches import PatchSpec

    norm = store.open(features)["/normalisation"].to_dataset()
    meta = {
        "normalisation": {
            "band": list(PAPER_CHANNELS),
            "center": [float(v) for v in norm["center"].values],
            "scale": [float(v) for v in norm["scale"].values],
        },
        "patch": PatchSpec(32, 16).to_dict(),
    }
    torch.manual_seed(seed)
    save_checkpoint(Checkpoint.from_model(UNet(UNetConfig(width=4, depth=2, **unet)), meta), path)
    return Path(path)
