"""Landslide labels and inputs on the cube's grid: the inventory, the layers, the settings.

The landslide side of both papers works on per-pixel layers of one event, all on the
feature store's grid and all lazy (Dask):

=============  ==========================================================================
layer          meaning (units)
=============  ==========================================================================
pre_ndvi       Sentinel-2 NDVI, median of clear pre-event views (the store's /pre target)
post_ndvi      the same after the event (/post target): needs a cloud-free post image
dndvi          post_ndvi - pre_ndvi
radar_ndvi     post-event NDVI predicted from Sentinel-1 by the trained model (a prediction
               store from `sar2ndvi.publish.write_prediction`)
radar_dndvi    radar_ndvi - pre_ndvi: dNDVI with no post-event optical image
pre_vv ...     pre/post VV and VH, dual-orbit means, dB (the stores' ``vv``/``vh`` bands)
slope          terrain slope, degrees (from the store's sin(slope) channel)
post_B02 ...   post-event surface reflectance B02, B03, B04, B08 (blue, green, red, NIR),
               median of clear views (from the cube's /s2 group)
=============  ==========================================================================

`SETTINGS` are the Jolster paper's four input settings and ours (5), which needs no
post-event optical data. `write_inputs` stores the layers in the layout a `PatchDataset`
reads (group ``inputs``: ``features`` (band, y, x), ``target`` = the rasterised inventory,
``gaps``), with ``/normalisation`` statistics, so the segmentation U-net trains on it with
the NDVI model's patch machinery.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import geopandas as gpd
import numpy as np
import rasterio.features
import rioxarray  # noqa: F401  (registers the .rio accessor)
import shapely
import xarray as xr
from affine import Affine
from pyproj import CRS

from sar2ndvi import store
from sar2ndvi.errors import InputError

__all__ = [
    "INPUT_GROUP",
    "LAYERS",
    "SETTINGS",
    "Setting",
    "grid_crs",
    "grid_transform",
    "landslide_inputs",
    "rasterize_inventory",
    "read_inventory",
    "setting",
    "stack_layers",
    "write_inputs",
]

#: The group of an input store that `PatchDataset` reads.
INPUT_GROUP = "inputs"

#: Every layer `landslide_inputs` can make: name -> (long name, units).
LAYERS: dict[str, tuple[str, str]] = {
    "pre_ndvi": ("Sentinel-2 NDVI before the event", "1"),
    "post_ndvi": ("Sentinel-2 NDVI after the event", "1"),
    "dndvi": ("NDVI change, Sentinel-2 (post - pre)", "1"),
    "radar_ndvi": ("NDVI after the event predicted from Sentinel-1", "1"),
    "radar_dndvi": ("NDVI change, radar-derived post - Sentinel-2 pre", "1"),
    "pre_vv": ("VV backscatter before the event, dual-orbit mean", "dB"),
    "pre_vh": ("VH backscatter before the event, dual-orbit mean", "dB"),
    "post_vv": ("VV backscatter after the event, dual-orbit mean", "dB"),
    "post_vh": ("VH backscatter after the event, dual-orbit mean", "dB"),
    "slope": ("terrain slope", "degree"),
    "post_B02": ("surface reflectance B02 (blue) after the event", "1"),
    "post_B03": ("surface reflectance B03 (green) after the event", "1"),
    "post_B04": ("surface reflectance B04 (red) after the event", "1"),
    "post_B08": ("surface reflectance B08 (NIR) after the event", "1"),
}

#: Histogram ranges (physical units) of the layers for the normalisation statistics.
LAYER_RANGES: dict[str, tuple[float, float]] = {
    **{k: (-1.0, 1.0) for k in ("pre_ndvi", "post_ndvi", "radar_ndvi")},
    **{k: (-2.0, 2.0) for k in ("dndvi", "radar_dndvi")},
    **{k: (-80.0, 40.0) for k in ("pre_vv", "pre_vh", "post_vv", "post_vh")},
    "slope": (0.0, 90.0),
    **{f"post_{b}": (0.0, 1.6) for b in ("B02", "B03", "B04", "B08")},
}

_OPTICAL = {"post_B02": "B02", "post_B03": "B03", "post_B04": "B04", "post_B08": "B08"}


@dataclass(frozen=True)
class Setting:
    """An input setting: which layers a landslide classifier sees.

    Attributes:
        key: "1".."5".
        name: a short description for tables.
        layers: layer names (keys of `LAYERS`), in channel order.
    """

    key: str
    name: str
    layers: tuple[str, ...]

    @property
    def post_optical(self) -> bool:
        """Whether the setting needs a cloud-free post-event Sentinel-2 image."""
        return any(layer in ("post_ndvi", "dndvi") or layer in _OPTICAL for layer in self.layers)


SETTINGS: dict[str, Setting] = {
    s.key: s
    for s in (
        Setting(
            "1",
            "all bands",
            (
                "dndvi",
                "pre_ndvi",
                "post_ndvi",
                "pre_vv",
                "post_vv",
                "pre_vh",
                "post_vh",
                "slope",
                "post_B02",
                "post_B03",
                "post_B04",
                "post_B08",
            ),
        ),
        Setting("2", "dNDVI + pre VV + post VV", ("dndvi", "pre_vv", "post_vv")),
        Setting("3", "pre VV + post VV", ("pre_vv", "post_vv")),
        Setting(
            "4",
            "post R, G, B, NIR + dNDVI",
            ("post_B04", "post_B03", "post_B02", "post_B08", "dndvi"),
        ),
        Setting(
            "5",
            "radar dNDVI + pre/post VV, VH",
            ("radar_dndvi", "pre_vv", "post_vv", "pre_vh", "post_vh"),
        ),
    )
}


def setting(key: str | int) -> Setting:
    """The setting `key` ("1".."5")."""
    try:
        return SETTINGS[str(key)]
    except KeyError:
        raise InputError(
            f"unknown landslide input setting {key!r}; choose from "
            + ", ".join(f"{k} ({s.name})" for k, s in SETTINGS.items())
        ) from None


# --- the inventory ----------------------------------------------------------------------------


def read_inventory(path: str | os.PathLike, *, layer: str | None = None) -> gpd.GeoDataFrame:
    """A landslide inventory: polygons with a CRS, from GeoJSON, GeoPackage or any OGR file.

    Raises:
        InputError: the file is missing or unreadable, holds no feature, has no CRS, or holds
            geometries that are not (multi)polygons.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such landslide inventory")
    try:
        frame = gpd.read_file(path, layer=layer, engine="pyogrio")
    except Exception as exc:  # pyogrio's DataSourceError, ValueError, ...
        raise InputError(f"{path}: cannot read this landslide inventory ({exc})") from exc
    return check_inventory(frame, str(path))


def check_inventory(frame: gpd.GeoDataFrame, name: str = "inventory") -> gpd.GeoDataFrame:
    """`frame` with empty geometries dropped, checked as `read_inventory` does."""
    frame = frame[~(frame.geometry.isna() | frame.geometry.is_empty)]
    if len(frame) == 0:
        raise InputError(f"{name}: the landslide inventory holds no polygon")
    if frame.crs is None:
        raise InputError(
            f"{name}: the landslide inventory has no CRS; set one (e.g. GeoJSON in WGS 84 or "
            "a GeoPackage layer with its EPSG code)"
        )
    kinds = set(frame.geometry.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise InputError(
            f"{name}: landslide inventories are polygons, found {sorted(kinds)} geometries"
        )
    return frame.reset_index(drop=True)


def grid_crs(like: xr.DataArray | xr.Dataset) -> CRS:
    """The CRS of a georeferenced array (its ``spatial_ref`` coordinate)."""
    crs = like.rio.crs
    if crs is None:
        raise InputError("the grid has no CRS: pass an array from a sar2ndvi store")
    return CRS.from_user_input(crs)


def grid_transform(like: xr.DataArray | xr.Dataset) -> Affine:
    """The affine transform of a grid's pixel corners, from its regular x/y coordinates."""
    x, y = np.asarray(like["x"].values), np.asarray(like["y"].values)
    if len(x) < 2 or len(y) < 2:
        raise InputError("the grid needs at least 2 pixels along x and y")
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    return Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)


def _rasterize_block(
    block: np.ndarray,
    frame: gpd.GeoDataFrame,
    transform: Affine,
    all_touched: bool,
    block_info: dict | None = None,
) -> np.ndarray:
    assert block_info is not None
    (r0, r1), (c0, c1) = block_info[None]["array-location"]
    out = np.zeros((r1 - r0, c1 - c0), dtype=np.int32)
    local = transform * Affine.translation(c0, r0)
    left, top = local * (0, 0)
    right, bottom = local * (c1 - c0, r1 - r0)
    hits = frame.sindex.query(
        shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    )
    if len(hits) == 0:
        return out
    shapes = ((frame.geometry.iloc[i], int(frame["_value"].iloc[i])) for i in sorted(hits))
    return rasterio.features.rasterize(
        shapes, out=out, transform=local, all_touched=all_touched, dtype=np.int32
    )


def rasterize_inventory(
    inventory: gpd.GeoDataFrame | str | os.PathLike,
    like: xr.DataArray | xr.Dataset,
    *,
    all_touched: bool = False,
) -> xr.DataArray:
    """The inventory burnt onto the grid of `like`, lazily, chunk by chunk.

    Args:
        inventory: polygons (any CRS) or the path of an inventory file.
        like: a georeferenced (y, x) array or dataset on the target grid; its chunks are
            the output's.
        all_touched: burn every pixel a polygon touches (default: pixel centres inside).

    Returns:
        (y, x) int32 ``landslide_id``: 0 outside landslides, else 1 + the polygon's row in
        the inventory (a later polygon wins where two overlap).

    Raises:
        InputError: the inventory is empty, or none of it lies on the grid (a mismatched
            CRS or area).
    """
    frame = read_inventory(inventory) if isinstance(inventory, str | os.PathLike) else inventory
    frame = check_inventory(frame)
    crs, transform = grid_crs(like), grid_transform(like)
    frame = frame.to_crs(crs)[["geometry"]].copy()
    frame["_value"] = np.arange(1, len(frame) + 1, dtype=np.int32)
    ny, nx = like.sizes["y"], like.sizes["x"]
    x0, y0 = transform * (0, 0)
    x1, y1 = transform * (nx, ny)
    grid_box = shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if not frame.intersects(grid_box).any():
        minx, miny, maxx, maxy = frame.total_bounds
        raise InputError(
            f"the landslide inventory ({len(frame)} polygons, bounds {minx:.0f}, {miny:.0f}, "
            f"{maxx:.0f}, {maxy:.0f} in {crs.to_string()}) does not overlap the grid "
            f"({grid_box.bounds}); is it for another area, or is its CRS wrong?"
        )
    template = like if isinstance(like, xr.DataArray) else next(iter(like.data_vars.values()))
    template = template.isel({d: 0 for d in template.dims if d not in ("y", "x")}, drop=True)
    template = template.transpose("y", "x")
    data = template.data if isinstance(template.data, da.Array) else da.from_array(template.values)
    ids = da.map_blocks(
        _rasterize_block,
        data,
        frame,
        transform,
        all_touched,
        dtype=np.int32,
        meta=np.empty((0, 0), dtype=np.int32),
    )
    coords = {"y": like["y"], "x": like["x"]}
    if "spatial_ref" in like.coords:
        coords["spatial_ref"] = like["spatial_ref"]
    return xr.DataArray(
        ids,
        dims=("y", "x"),
        coords=coords,
        name="landslide_id",
        attrs={"long_name": "landslide inventory id (0: none)", "all_touched": int(all_touched)},
    )


# --- the layers -------------------------------------------------------------------------------


def _tree(source: Any, what: str) -> xr.DataTree:
    if isinstance(source, xr.DataTree):
        return source
    if isinstance(source, str | os.PathLike):
        return store.open(os.fspath(source))
    raise InputError(f"{what}: expected a store path or an xarray.DataTree, got {type(source)}")


def _band(group: xr.Dataset, band: str, where: str) -> xr.DataArray:
    bands = [str(b) for b in group["band"].values]
    if band not in bands:
        raise InputError(
            f"{where} has no {band!r} band (bands: {bands}); write the features with a "
            "variant that keeps the dual-orbit mean (e.g. paper9)"
        )
    return group["features"].sel(band=band, drop=True)


def _clear_composite(s2: xr.Dataset, name: str, period: str) -> xr.DataArray:
    """Median of the clear (non-NaN) views of one Sentinel-2 variable over a period."""
    if name not in s2:
        raise InputError(f"the cube's /s2 group has no {name!r} band")
    if "period" not in s2.coords:
        raise InputError("the cube's /s2 group has no 'period' coordinate")
    period_of = np.asarray(s2["period"].values)
    scenes = s2[name].isel(time=np.flatnonzero(period_of == period))
    if scenes.sizes["time"] == 0:
        raise InputError(f"the cube has no {period}-event Sentinel-2 view for {name}")
    return scenes.chunk({"time": -1}).median("time", skipna=True)


def landslide_inputs(
    features: str | os.PathLike | xr.DataTree,
    layers: Sequence[str] | None = None,
    *,
    prediction: str | os.PathLike | xr.Dataset | xr.DataArray | None = None,
    cube: str | os.PathLike | xr.DataTree | None = None,
) -> xr.Dataset:
    """The landslide layers on the feature store's grid, lazily (see the module doc).

    Args:
        features: a feature store (path or DataTree) with /pre and /post groups.
        layers: the layers to make (default: every layer the given sources allow).
        prediction: post-event NDVI from radar (a prediction store, its Dataset, or its
            ``ndvi`` DataArray); needed by radar_ndvi and radar_dndvi.
        cube: the cube (path or DataTree) the features came from; needed by post_B0x.

    Returns:
        Dataset of (y, x) float32 layers, with the store's ``spatial_ref``.

    Raises:
        InputError: an unknown layer, or a layer whose source was not given.
    """
    tree = _tree(features, "features")
    for period in ("pre", "post"):
        if f"/{period}" not in tree.groups:
            raise InputError(f"the feature store has no /{period} group: it needs both periods")
    pre, post = tree["/pre"].to_dataset(), tree["/post"].to_dataset()
    if layers is None:
        layers = [
            name
            for name in LAYERS
            if (prediction is not None or not name.startswith("radar"))
            and (cube is not None or name not in _OPTICAL)
        ]
    unknown = [name for name in layers if name not in LAYERS]
    if unknown:
        raise InputError(f"unknown landslide layers {unknown}; known: {list(LAYERS)}")

    radar_ndvi: xr.DataArray | None = None
    if any(name.startswith("radar") for name in layers):
        if prediction is None:
            raise InputError(
                "the radar_ndvi / radar_dndvi layers need the post-event NDVI predicted from "
                "Sentinel-1: pass prediction= (a store from `sar2ndvi predict`)"
            )
        radar_ndvi = _prediction_ndvi(prediction)
        if radar_ndvi.sizes != {"y": pre.sizes["y"], "x": pre.sizes["x"]}:
            raise InputError(
                f"the prediction is {dict(radar_ndvi.sizes)} px but the features are "
                f"{pre.sizes['y']} x {pre.sizes['x']}: predict from this feature store"
            )
        radar_ndvi = radar_ndvi.assign_coords(y=pre["y"], x=pre["x"])
    s2: xr.Dataset | None = None
    if any(name in _OPTICAL for name in layers):
        if cube is None:
            raise InputError("the post_B0x layers need the cube's Sentinel-2 bands: pass cube=")
        s2 = _tree(cube, "cube")["/s2"].to_dataset()

    def make(name: str) -> xr.DataArray:
        if name == "pre_ndvi":
            return pre["target"]
        if name == "post_ndvi":
            return post["target"]
        if name == "dndvi":
            return post["target"] - pre["target"]
        if name == "radar_ndvi":
            assert radar_ndvi is not None
            return radar_ndvi
        if name == "radar_dndvi":
            assert radar_ndvi is not None
            return radar_ndvi - pre["target"]
        if name == "slope":
            sin_slope = _band(pre, "sin_slope", "/pre").clip(-1.0, 1.0)
            return np.degrees(np.arcsin(sin_slope))
        if name in _OPTICAL:
            assert s2 is not None
            return _clear_composite(s2, _OPTICAL[name], "post").assign_coords(
                y=pre["y"], x=pre["x"]
            )
        period, band = name.split("_")
        return _band(pre if period == "pre" else post, band, f"/{period}")

    out = {}
    for name in layers:
        long_name, units = LAYERS[name]
        layer = make(name)
        layer = layer.drop_vars([c for c in ("band", "time", "layer") if c in layer.coords])
        out[name] = layer.astype(np.float32).assign_attrs(long_name=long_name, units=units)
    ds = xr.Dataset(out)
    if "spatial_ref" in pre.coords:
        ds = ds.assign_coords(spatial_ref=pre["spatial_ref"])
    return ds


def _prediction_ndvi(prediction: Any) -> xr.DataArray:
    if isinstance(prediction, xr.DataArray):
        arr = prediction
    else:
        ds = (
            store.open(os.fspath(prediction))
            if isinstance(prediction, str | os.PathLike)
            else prediction
        )
        if isinstance(ds, xr.DataTree):
            ds = ds.to_dataset()
        if "ndvi" not in ds:
            raise InputError("the prediction store has no 'ndvi' variable")
        arr = ds["ndvi"]
    extra = [d for d in arr.dims if d not in ("y", "x")]
    return arr.isel({d: 0 for d in extra}, drop=True) if extra else arr


def stack_layers(inputs: xr.Dataset, layers: Sequence[str]) -> xr.DataArray:
    """The (band, y, x) stack of `layers` from `landslide_inputs` output."""
    missing = [name for name in layers if name not in inputs]
    if missing:
        raise InputError(f"the landslide inputs lack the layers {missing}")
    stack = xr.concat([inputs[name] for name in layers], dim="band", coords="minimal")
    return stack.assign_coords(band=list(layers)).rename("features")


# --- the input store --------------------------------------------------------------------------


def write_inputs(
    inputs: xr.Dataset,
    out: str | os.PathLike,
    *,
    labels: xr.DataArray | None = None,
    overwrite: bool = False,
    progress: bool = False,
    attrs: Mapping[str, Any] | None = None,
    storage_options: dict | None = None,
) -> str:
    """Store the layers (and labels) in the layout `PatchDataset` reads, at `out`: a path
    or an fsspec URL (``s3://...``, with fsspec's `storage_options`).

    Layout: ``/inputs`` with ``features`` (band, y, x) float32, ``target`` (y, x) float32
    (1 inside an inventory landslide, 0 outside, NaN without an inventory), ``gaps`` (y, x)
    uint8 (1 where a layer has no data) and ``landslide_id`` (y, x) int32 when labelled;
    ``/normalisation`` with per-band ``center`` and ``scale``: clipped mean and standard
    deviation over the scene's complete pixels. They use no label, so the held-out area's
    inputs entering them leaks nothing about its landslides.

    Returns:
        the store's path.
    """
    layers = list(inputs.data_vars)
    stack = stack_layers(inputs, layers)
    gaps = stack.isnull().any("band").astype(np.uint8).rename("gaps")
    gaps.attrs.update(long_name="1 where an input layer has no data")
    if labels is not None:
        target = (labels > 0).astype(np.float32)
        target.attrs.update(long_name="landslide (1) or not (0), from the inventory")
    else:
        target = xr.full_like(gaps, np.nan, dtype=np.float32)
        target.attrs.update(long_name="no inventory: unlabelled")
    group = xr.Dataset({"features": stack, "target": target.rename("target"), "gaps": gaps})
    if labels is not None:
        group["landslide_id"] = labels.astype(np.int32)
    complete = stack.notnull().all("band")
    stats = normalisation_for(stack, complete)
    tree = xr.DataTree.from_dict(
        {"/": xr.Dataset(), f"/{INPUT_GROUP}": group, "/normalisation": stats}
    )
    store.write(
        tree,
        os.fspath(out),
        overwrite=overwrite,
        progress=progress,
        attrs=attrs,
        storage_options=storage_options,
    )
    return os.fspath(out)


def normalisation_for(stack: xr.DataArray, mask: xr.DataArray | None = None) -> xr.Dataset:
    """Clipped-moment normalisation statistics of landslide layers (see
    `sar2ndvi.features.normalisation_stats`), with the layers' histogram ranges."""
    from sar2ndvi.features import normalisation_stats

    return normalisation_stats(stack, mask, ranges=LAYER_RANGES)
