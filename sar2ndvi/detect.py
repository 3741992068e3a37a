"""Map landslides over a whole scene and publish them: a mask cube in Zarr and polygons.

Two detectors, both lazy and chunk-wise:

- ``threshold``: NDVI change on slopes (`sar2ndvi.change.detect_change`), from the radar-
  derived post-event NDVI (no post-event optical image needed) or from Sentinel-2's;
- ``unet``: a trained segmentation U-net (`sar2ndvi.segment`), its probabilities tiled and
  blended by `sar2ndvi.predict`, thresholded, objects below the minimum area removed.

`write_detection` stores ``mask`` (uint8), ``score`` (float32, the change score or the
probability) and ``label`` (int32 object ids) as one georeferenced Zarr store, then traces
polygons from the *stored* labels (no recomputation) with their area, mean dNDVI, mean
slope and confidence (mean score), written as GeoPackage and GeoJSON.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from sar2ndvi import store
from sar2ndvi.change import detect_change, objects
from sar2ndvi.checkpoint import load_checkpoint, resolve
from sar2ndvi.errors import InputError
from sar2ndvi.landslides import landslide_inputs, stack_layers
from sar2ndvi.polygons import polygonize, write_polygons

__all__ = ["detect_threshold", "detect_unet", "write_detection"]


def detect_threshold(
    features: Any,
    *,
    prediction: Any = None,
    optical: bool = False,
    threshold: float | None = None,
    min_slope: float = 10.0,
    min_area: float = 500.0,
    radius: int = 1,
) -> tuple[xr.Dataset, xr.Dataset]:
    """NDVI-change landslides: (layers, inputs) where layers hold mask/score/label and
    inputs the dNDVI and slope used (for the polygons' statistics).

    Args:
        features: the feature store (pre and post groups).
        prediction: the radar-derived post-event NDVI store (required unless `optical`).
        optical: use Sentinel-2's post-event NDVI instead of the radar-derived one.
        threshold, min_slope, min_area, radius: see `detect_change`.
    """
    change_layer = "dndvi" if optical else "radar_dndvi"
    if not optical and prediction is None:
        raise InputError(
            "threshold detection from radar needs the post-event NDVI predicted by "
            "`sar2ndvi predict` (pass prediction=), or optical=True for Sentinel-2's"
        )
    inputs = landslide_inputs(features, [change_layer, "slope"], prediction=prediction)
    result = detect_change(
        inputs[change_layer],
        inputs["slope"],
        threshold=threshold,
        min_slope=min_slope,
        min_area=min_area,
        radius=radius,
    )
    layers = result.layers.assign_attrs(
        method="threshold",
        change_layer=change_layer,
        threshold=result.threshold,
        min_slope_deg=min_slope,
        min_area_m2=min_area,
    )
    return layers, inputs.rename({change_layer: "dndvi"})


def detect_unet(
    model: str | os.PathLike,
    features: Any,
    *,
    prediction: Any = None,
    cube: Any = None,
    probability: float | None = None,
    min_area: float = 500.0,
    device: str = "cpu",
    batch_size: int = 16,
    scratch: str | os.PathLike | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Segmentation-U-net landslides: (layers, inputs) as `detect_threshold`.

    The checkpoint's metadata names the layers it was trained on; they are built from the
    given stores (`landslide_inputs`) and its probabilities predicted chunk by chunk.

    Args:
        probability: the cut: a pixel at or above it is a landslide. None: the
            checkpoint's operating point (``threshold``, the cut of highest validation MCC
            that `sar2ndvi.segment.train_segmentation` records), or 0.5 for a checkpoint
            without one.
        scratch: a local Zarr path for the probabilities. Given, they are predicted once,
            written there chunk by chunk and read back, so that labelling the objects
            (which counts them, then labels each block through separately optimised
            graphs) never reruns the network; the caller removes it afterwards. None keeps
            everything lazy, at the price of a few more forward passes over the scene.
    """
    from sar2ndvi.predict import predict_layers

    checkpoint = load_checkpoint(resolve(model))
    if checkpoint.metadata.get("task") != "landslides":
        raise InputError(
            f"{model}: not a landslide segmentation checkpoint (train one with "
            "`sar2ndvi evaluate-landslides`)"
        )
    if probability is None:
        probability = float(checkpoint.metadata.get("threshold", 0.5))
    layers = list(checkpoint.metadata["normalisation"]["band"])
    # the polygons' statistics: dNDVI (radar-derived when given) and slope
    change = "radar_dndvi" if prediction is not None else "dndvi"
    wanted = layers + [name for name in (change, "slope") if name not in layers]
    inputs = landslide_inputs(features, wanted, prediction=prediction, cube=cube)
    stack = stack_layers(inputs, layers)
    prob = predict_layers(resolve(model), stack, device=device, batch_size=batch_size).isel(
        layer=0, drop=True
    )
    # keep the prediction's own (large) chunks: on finer chunks every slice of one
    # prediction block would carry, and rerun, the whole block's forward passes once the
    # labelling turns the blocks into separately optimised delayed objects
    valid = stack.notnull().all("band").chunk(dict(zip(prob.dims, prob.data.chunks, strict=True)))
    prob = prob.where(valid)
    if scratch is not None:
        prob = _stored(prob.astype(np.float32), scratch)
    label = objects(prob.data >= float(probability), prob, min_area)
    out = xr.Dataset(
        {
            "mask": (label > 0).astype(np.uint8).assign_attrs(long_name="landslide (1), U-net"),
            "score": prob.astype(np.float32).assign_attrs(long_name="landslide probability"),
            "label": label.assign_attrs(long_name="landslide object id (0: none)"),
        },
        attrs={
            "method": "unet",
            "setting": checkpoint.metadata.get("setting", ""),
            "probability": probability,
            "min_area_m2": min_area,
        },
    )
    return out, inputs[[change, "slope"]].rename({change: "dndvi"})


def _via_scratch(ds: xr.Dataset, path: str | os.PathLike) -> xr.Dataset:
    """`ds` with its variables computed once, together, into a scratch Zarr store at
    `path` and read back lazily (coordinates and attributes kept)."""
    # the bare arrays only: no coordinates, attributes or encodings to carry into Zarr
    bare = xr.Dataset({name: (var.dims, var.data) for name, var in ds.data_vars.items()})
    bare.to_zarr(os.fspath(path), mode="w", consolidated=False)
    stored = xr.open_zarr(os.fspath(path), consolidated=False)
    out = ds.copy()
    for name in ds.data_vars:
        out[name] = ds[name].copy(data=stored[name].data)
    return out


def _stored(array: xr.DataArray, path: str | os.PathLike) -> xr.DataArray:
    """`array` computed once into a scratch Zarr store at `path`, and read back lazily."""
    return array.copy(data=_via_scratch(array.to_dataset(name="value"), path)["value"].data)


def _labelled_once(ds: xr.Dataset, scratch: Path) -> xr.Dataset:
    """`ds` with ``score`` and ``label`` computed once, together, into a scratch Zarr store.

    The labels come from a global step (connected components merged across chunks, then the
    area filter's object sizes): written region by region, each region would rerun it, and
    ``mask`` would rerun it again. One ``to_zarr`` computes the shared graph once; the
    final store then copies the scratch chunks, and ``mask`` is derived from the stored
    labels.
    """
    stored = _via_scratch(ds[["score", "label"]], scratch)
    out = ds.assign(score=stored["score"], label=stored["label"])
    out["mask"] = ds["mask"].copy(data=(out["label"].data > 0).astype(np.uint8))
    return out


def write_detection(
    layers: xr.Dataset,
    inputs: xr.Dataset,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Store the layers in ``<out>/landslides.zarr`` and the polygons in
    ``<out>/landslides.gpkg`` and ``<out>/landslides.geojson``.

    Returns:
        the paths written, by kind ("store", "gpkg", "geojson").
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "landslides.zarr"
    ds = layers.copy()
    if "spatial_ref" not in ds.coords and "spatial_ref" in inputs.coords:
        ds = ds.assign_coords(spatial_ref=inputs["spatial_ref"])
    provenance = {f"sar2ndvi:{k}": v for k, v in layers.attrs.items()}
    ds.attrs = {}
    for name in ds.data_vars:
        if isinstance(ds[name].data, da.Array):
            ds[name] = ds[name].chunk({"y": 1024, "x": 1024})
    scratch = out / ".landslides-scratch.zarr"
    if store.is_complete(os.fspath(target)) and not overwrite:
        # let store.write refuse (or the caller decide) without computing anything
        scratch = None
    else:
        ds = _labelled_once(ds, scratch)
    try:
        store.write(
            ds,
            os.fspath(target),
            overwrite=overwrite,
            progress=progress,
            attrs={**provenance, **(attrs or {})},
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    stored = store.open(os.fspath(target))
    stored = stored.to_dataset() if isinstance(stored, xr.DataTree) else stored
    stats = {"confidence": stored["score"]}
    if "dndvi" in inputs:
        stats["mean_dndvi"] = inputs["dndvi"]
    if "slope" in inputs:
        stats["mean_slope_deg"] = inputs["slope"]
    frame = polygonize(stored["label"], stats)
    paths = {"store": target}
    for suffix in ("gpkg", "geojson"):
        paths[suffix] = write_polygons(frame, out / f"landslides.{suffix}")
    return paths
