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
    probability: float = 0.5,
    min_area: float = 500.0,
    device: str = "cpu",
    batch_size: int = 16,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Segmentation-U-net landslides: (layers, inputs) as `detect_threshold`.

    The checkpoint's metadata names the layers it was trained on; they are built from the
    given stores (`landslide_inputs`) and its probabilities predicted chunk by chunk.
    """
    from sar2ndvi.predict import predict_layers

    checkpoint = load_checkpoint(resolve(model))
    if checkpoint.metadata.get("task") != "landslides":
        raise InputError(
            f"{model}: not a landslide segmentation checkpoint (train one with "
            "`sar2ndvi evaluate-landslides`)"
        )
    layers = list(checkpoint.metadata["normalisation"]["band"])
    # the polygons' statistics: dNDVI (radar-derived when given) and slope
    change = "radar_dndvi" if prediction is not None else "dndvi"
    wanted = layers + [name for name in (change, "slope") if name not in layers]
    inputs = landslide_inputs(features, wanted, prediction=prediction, cube=cube)
    stack = stack_layers(inputs, layers)
    prob = predict_layers(resolve(model), stack, device=device, batch_size=batch_size).isel(
        layer=0, drop=True
    )
    prob = prob.where(stack.notnull().all("band"))
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
    store.write(
        ds,
        os.fspath(target),
        overwrite=overwrite,
        progress=progress,
        attrs={**provenance, **(attrs or {})},
    )
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
