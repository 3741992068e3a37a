"""Landslide polygons from a labelled mask, with attributes, written for GIS.

`polygonize` traces each chunk of a label raster with ``rasterio.features.shapes`` (pixel
edges, exact) and dissolves the pieces of an object that a chunk border cut, so the result
does not depend on the chunking; per-object statistics (area, mean dNDVI, mean slope, mean
confidence) are pooled chunk by chunk with ``dask.array.bincount``. `write_polygons` writes
GeoPackage or GeoJSON (in the grid's CRS, which GDAL records and QGIS reads) atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import shapely
import xarray as xr
from affine import Affine

from sar2ndvi.errors import InputError
from sar2ndvi.landslides import grid_crs, grid_transform

__all__ = ["DRIVERS", "polygonize", "write_polygons"]

#: File suffix -> OGR driver.
DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}


def _block_shapes(block: np.ndarray, transform: Affine, r0: int, c0: int) -> list[tuple]:
    local = transform * Affine.translation(c0, r0)
    block = np.ascontiguousarray(block, dtype=np.int32)
    return [
        (int(value), shapely.geometry.shape(geom))
        for geom, value in rasterio.features.shapes(
            block, mask=block > 0, connectivity=8, transform=local
        )
    ]


def polygonize(
    labels: xr.DataArray,
    stats: Mapping[str, xr.DataArray] | None = None,
) -> gpd.GeoDataFrame:
    """One polygon per labelled object, with its area and the mean of each `stats` layer.

    Args:
        labels: (y, x) integer object ids on a georeferenced grid (0: background).
        stats: (y, x) layers to average over each object, e.g. ``{"mean_dndvi": dndvi,
            "mean_slope_deg": slope, "confidence": score}`` (NaN pixels are left out).

    Returns:
        GeoDataFrame in the grid's CRS: ``id`` (the label), ``area_m2``, ``pixels``, one
        column per `stats` entry, ``geometry`` (Polygon or MultiPolygon), sorted by id.
    """
    crs, transform = grid_crs(labels), grid_transform(labels)
    data = labels.data if isinstance(labels.data, da.Array) else da.from_array(labels.values)
    data = data.astype(np.int32)
    offsets = [np.concatenate([[0], np.cumsum(c)])[:-1] for c in data.chunks]
    pieces = [
        dask.delayed(_block_shapes)(block, transform, int(offsets[0][i]), int(offsets[1][j]))
        for (i, j), block in np.ndenumerate(np.array(data.to_delayed(), dtype=object))
    ]
    flat = data.ravel()
    count = da.bincount(flat, minlength=1)
    sums = {}
    for name, layer in (stats or {}).items():
        values = layer.data if isinstance(layer.data, da.Array) else da.from_array(layer.values)
        values = values.astype(np.float64).rechunk(data.chunks).ravel()
        finite = da.isfinite(values)
        sums[name] = (
            da.bincount(flat, weights=da.where(finite, values, 0.0), minlength=1),
            da.bincount(flat, weights=finite.astype(np.float64), minlength=1),
        )
    shapes, count, sums = dask.compute(pieces, count, sums)
    columns = ["id", "area_m2", "pixels", *sums, "geometry"]
    rows = [item for block in shapes for item in block]
    if not rows:
        return gpd.GeoDataFrame(columns=columns, geometry="geometry", crs=crs)
    frame = gpd.GeoDataFrame({"id": [r[0] for r in rows]}, geometry=[r[1] for r in rows], crs=crs)
    frame = frame.dissolve(by="id", as_index=False)
    ids = frame["id"].to_numpy()
    pixel_area = abs(transform.a * transform.e)
    frame["pixels"] = count[ids].astype(np.int64)
    frame["area_m2"] = frame["pixels"] * pixel_area
    for name, (total, n) in sums.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            frame[name] = np.where(n[ids] > 0, total[ids] / np.maximum(n[ids], 1), np.nan)
    frame["geometry"] = shapely.make_valid(frame.geometry.values)
    return frame[columns].sort_values("id").reset_index(drop=True)


def write_polygons(
    frame: gpd.GeoDataFrame, path: str | os.PathLike, *, layer: str = "landslides"
) -> Path:
    """Write polygons to GeoPackage (``.gpkg``) or GeoJSON (``.geojson``), atomically.

    The file is written under a temporary name and renamed into place, so a reader never
    opens a half-written file and an existing one survives a failed write.
    """
    path = Path(path)
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise InputError(f"{path}: write polygons to one of {sorted(DRIVERS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    out = frame.copy()
    for column in out.columns:
        if column != "geometry" and pd.api.types.is_integer_dtype(out[column]):
            out[column] = out[column].astype(np.int64)
    try:
        out.to_file(tmp, driver=driver, layer=layer, engine="pyogrio")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
