"""Landslides from NDVI change: threshold, slope gate, morphological cleaning, minimum area.

A landslide strips the vegetation off a slope, so NDVI drops (dNDVI = post - pre < 0) where
the ground is steep. `detect_change` maps that lazily, chunk by chunk:

1. candidates: dNDVI below `threshold` (given, or Otsu's on the scene's dNDVI histogram,
   `otsu_threshold`) on slopes of at least `min_slope` degrees;
2. cleaning: a binary opening (removes specks thinner than the disk) then a closing (fills
   pinholes and notches), with a disk of `radius` px, via ``scipy.ndimage`` on overlapping
   chunks (exact: the overlap is the structuring element's reach);
3. objects: 8-connected components across chunk borders (``dask_image.ndmeasure.label``),
   and those smaller than `min_area` (m^2) are removed.

The per-pixel ``score`` is a logistic of the margin below the threshold,
``1 / (1 + exp((dNDVI - threshold) / SCORE_SCALE))``: 0.5 on the threshold, 0.88 at
0.1 below it. Polygons take its mean as their confidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from sar2ndvi.errors import InputError

__all__ = [
    "SCORE_SCALE",
    "ChangeResult",
    "detect_change",
    "disk",
    "label_objects",
    "objects",
    "otsu_threshold",
    "remove_small_objects",
]

#: NDVI units over which the change score goes from 0.5 to 0.73 (see the module doc).
SCORE_SCALE = 0.05
#: 8-connectivity: diagonal neighbours belong to the same object.
EIGHT = np.ones((3, 3), dtype=bool)
#: Histogram of dNDVI for Otsu's threshold: bins over [-2, 2] (dNDVI's full range).
OTSU_BINS = 2048


@dataclass(frozen=True)
class ChangeResult:
    """What `detect_change` found: lazy layers and the threshold it used."""

    layers: xr.Dataset  # mask (uint8), score (float32), label (int32)
    threshold: float
    min_slope: float
    min_area: float


def disk(radius: int) -> np.ndarray:
    """A disk-shaped structuring element of `radius` px ((2r+1) x (2r+1) bool)."""
    if radius < 0:
        raise InputError(f"radius must be >= 0 px, got {radius}")
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2 + radius * 0.5  # the +r/2 rounds the rim as skimage


def otsu_threshold(dndvi: xr.DataArray, mask: xr.DataArray | None = None) -> float:
    """Otsu's threshold of the scene's dNDVI (valid pixels, within `mask` when given).

    The histogram is built chunk by chunk (``dask.array.histogram``, `OTSU_BINS` bins on
    [-2, 2]) and handed to ``skimage.filters.threshold_otsu``.

    Raises:
        InputError: no valid pixel, or a constant dNDVI.
    """
    from skimage.filters import threshold_otsu

    values = dndvi if mask is None else dndvi.where(mask)
    data = values.data if isinstance(values.data, da.Array) else da.from_array(values.values)
    counts, edges = da.histogram(data, bins=OTSU_BINS, range=(-2.0, 2.0))
    counts = np.asarray(counts.compute())
    if counts.sum() == 0:
        raise InputError("Otsu's threshold: the dNDVI has no valid pixel")
    if np.count_nonzero(counts) < 2:
        raise InputError("Otsu's threshold: the dNDVI is constant; give a threshold")
    centres = 0.5 * (edges[1:] + edges[:-1])
    return float(threshold_otsu(hist=(counts, centres)))


def _clean_block(block: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    if footprint.size == 1:
        return block
    opened = ndimage.binary_opening(block, structure=footprint)
    return ndimage.binary_closing(opened, structure=footprint)


def label_objects(mask: da.Array) -> tuple[da.Array, int]:
    """8-connected components of a 2-D boolean Dask array, merged across chunk borders.

    Returns:
        (labels, n): int32 labels (0 = background, 1..n objects) and the object count
        (computed: sizing the area table needs it).
    """
    from dask_image.ndmeasure import label

    labels, count = label(mask, structure=EIGHT)
    return labels.astype(np.int32), int(count.compute())


def _lookup(block: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[block]


def remove_small_objects(labels: da.Array, count: int, min_pixels: int) -> da.Array:
    """`labels` with objects of fewer than `min_pixels` px set to 0 (others unchanged)."""
    if min_pixels <= 1 or count == 0:
        return labels
    areas = da.bincount(labels.ravel(), minlength=count + 1)
    keep = dask.delayed(lambda a: np.where(a >= min_pixels, np.arange(len(a)), 0).astype(np.int32))(
        areas
    )
    table = da.from_delayed(keep, shape=(count + 1,), dtype=np.int32)
    return da.map_blocks(_lookup, labels, table, dtype=np.int32)


def detect_change(
    dndvi: xr.DataArray,
    slope: xr.DataArray | None = None,
    *,
    threshold: float | None = None,
    min_slope: float = 10.0,
    radius: int = 1,
    min_area: float = 500.0,
) -> ChangeResult:
    """Map landslides as vegetation loss on slopes (see the module doc).

    Args:
        dndvi: (y, x) NDVI change, post - pre, on a regular grid (x/y coordinates, m).
        slope: (y, x) slope, degrees; None skips the slope gate.
        threshold: dNDVI below which a pixel is a candidate; None: Otsu's on the scene.
        min_slope: slope gate, degrees.
        radius: disk radius of the opening and closing, px (0: no cleaning).
        min_area: objects smaller than this many m^2 are removed.

    Returns:
        `ChangeResult` with lazy (y, x) layers ``mask`` (uint8 1/0), ``score`` (float32,
        NaN where dNDVI is missing) and ``label`` (int32 object ids after the area filter,
        not consecutive).
    """
    if threshold is None:
        threshold = otsu_threshold(dndvi)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise InputError(f"threshold must be a finite dNDVI, got {threshold}")
    candidate = (dndvi < threshold) & dndvi.notnull()
    if slope is not None:
        candidate = candidate & (slope >= float(min_slope))
    data = (
        candidate.data if isinstance(candidate.data, da.Array) else da.from_array(candidate.values)
    )
    footprint = disk(int(radius))
    # opening then closing reach 2r px each: an overlap of 2r keeps chunk borders exact
    cleaned = data.map_overlap(
        _clean_block, depth=2 * int(radius), boundary=False, footprint=footprint, dtype=bool
    )
    label = objects(cleaned, dndvi, min_area)
    score = 1.0 / (1.0 + np.exp((dndvi - threshold) / SCORE_SCALE))
    layers = xr.Dataset(
        {
            "mask": (label > 0)
            .astype(np.uint8)
            .assign_attrs(long_name="landslide (1) from NDVI change", threshold=threshold),
            "score": score.astype(np.float32).assign_attrs(
                long_name="change score: logistic of the margin below the threshold"
            ),
            "label": label.assign_attrs(long_name="landslide object id (0: none)"),
        }
    )
    return ChangeResult(layers, threshold, float(min_slope), float(min_area))


def objects(mask: da.Array, like: xr.DataArray, min_area: float) -> xr.DataArray:
    """8-connected objects of `mask` of at least `min_area` m^2, labelled on the grid of
    `like` (its x/y coordinates and ``spatial_ref``): lazy (y, x) int32, 0 = none."""
    labels, count = label_objects(mask)
    min_pixels = int(np.ceil(float(min_area) / _pixel_area(like)))
    labels = remove_small_objects(labels, count, min_pixels)
    coords = {"y": like["y"], "x": like["x"]}
    if "spatial_ref" in like.coords:
        coords["spatial_ref"] = like["spatial_ref"]
    return xr.DataArray(labels, dims=("y", "x"), coords=coords)


def _pixel_area(arr: xr.DataArray) -> float:
    x, y = np.asarray(arr["x"].values), np.asarray(arr["y"].values)
    if len(x) < 2 or len(y) < 2:
        raise InputError("the grid needs at least 2 pixels along x and y")
    return abs(float(x[1] - x[0]) * float(y[1] - y[0]))
